"""An ``unfreeze=1`` fit whose feature maps exceed ``cache_max_gb``.

Three ways to train the same model on the same JPEGs, each in its own
subprocess so its peak resident memory is its own:

- ``memory``: the features fit the bound and are held in memory;
- ``memory-mapped``: the bound is below their size, so they go to a
  memory-mapped file (the behaviour beyond ``cache_max_gb``);
- ``recompute``: ``cache=False``, the frozen part runs every epoch (what a
  fit beyond the bound did before features could be memory-mapped).

Printed: fit seconds, peak RSS, and whether the predicted probabilities of
each mode equal the in-memory ones. Run alone:
``python benchmarks/bench_spill.py [n_images] [max_epochs]``.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from _common import make_images

BACKBONE = "mobilenet_v3_small"
IMAGE_SIZE = 160
HERE = os.path.dirname(os.path.abspath(__file__))
MODES = {
    "memory": {"cache_max_gb": 64.0},
    "memory-mapped": {"cache_max_gb": 1e-6},
    "recompute": {"cache": False},
}


def _child(folder, n_images, epochs, mode, out):
    import time

    from _common import peak_rss_mib

    from sktransfer import PretrainedCNNClassifier

    X, y = make_images(folder, n_images, size=(256, 224))
    clf = PretrainedCNNClassifier(
        BACKBONE, weights=None, unfreeze=1, image_size=IMAGE_SIZE,
        max_epochs=epochs, random_state=0, device="cpu", **MODES[mode],
    )
    before = peak_rss_mib()
    start = time.perf_counter()
    clf.fit(X, y)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    np.save(out, clf.predict_proba(X[:200]))
    print(json.dumps({"fit_s": seconds, "before": before, "peak": peak}))


def _run_mode(folder, n_images, epochs, mode, out):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")]))
    stdout = subprocess.run(
        [sys.executable, __file__, "--child", folder, str(n_images), str(epochs),
         mode, out],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    return json.loads(stdout.strip().splitlines()[-1])


def run(n_images=1000, epochs=3, folder=None):
    folder = folder or tempfile.mkdtemp(prefix="sktransfer-bench-")
    images = f"{folder}/spill"
    make_images(images, n_images, size=(256, 224))
    results, proba = {}, {}
    for mode in MODES:
        out = os.path.join(folder, f"proba-{mode}.npy")
        results[mode] = _run_mode(images, n_images, epochs, mode, out)
        proba[mode] = np.load(out)
    rows = []
    for mode, r in results.items():
        same = np.abs(proba[mode] - proba["memory"]).max()
        rows.append((mode, r["fit_s"], r["peak"], r["peak"] - r["before"], same))
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5],
               sys.argv[6])
    else:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
        epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
        print(f"{BACKBONE}, weights=None, unfreeze=1, image_size={IMAGE_SIZE}, "
              f"{n} JPEGs 256x224, {epochs} epochs, CPU, float32")
        print(f"{'features':15s} {'fit s':>8s} {'peak RSS MiB':>13s} "
              f"{'RSS growth in fit':>18s} {'max |p - p_memory|':>19s}")
        rows = run(n, epochs)
        for mode, seconds, peak, growth, diff in rows:
            print(f"{mode:15s} {seconds:8.1f} {peak:13.0f} {growth:18.0f} "
                  f"{diff:19.2g}")
        fit = {mode: seconds for mode, seconds, *_ in rows}
        print(f"recompute / memory-mapped fit time: "
              f"{fit['recompute'] / fit['memory-mapped']:.2f}x; "
              f"memory-mapped / memory: {fit['memory-mapped'] / fit['memory']:.2f}x")
