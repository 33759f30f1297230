"""Cost against the number of images: time per image and peak memory.

``make bench-scale`` runs this. For generated photo-like JPEGs at 640x480
(and 12 MP) and n images, each operation runs in a fresh process, which
reports its wall time, its peak anonymous memory (``RssAnon`` of
``/proc/self/status``, sampled every 20 ms: the memory it holds, not the
file pages of memory-mapped features or of the images, which the kernel
may drop at any time) and ``VmHWM`` (every resident page):

- ``extract``: ``PretrainedFeatureExtractor.transform`` of all n;
- ``fit frozen``: ``PretrainedCNNClassifier(unfreeze=0).fit`` (3 epochs on
  the cached embedding);
- ``fit unfreeze=1``: 3 epochs training the last block, its input features
  beyond ``cache_max_gb`` and therefore memory-mapped from disk;
- ``predict``: ``predict`` of a fitted frozen classifier (no cache).

Then, at one n: extraction with 1 and 2 DataLoader decoding workers, and
``dask_predict(..., "transform")`` over a one- and a two-worker
``LocalCluster`` (one thread each). n files are hard links to a few hundred
unique images, so the disk holds only those; each link is a separate file
to the library (its own path and cache entry) and is decoded on each read,
but its bytes come from the page cache, as they would for a dataset that
fits in memory.

Targets (time per image constant within 15% from the smallest to the
largest n; peak memory growth no more than the extra features plus 10% of
the smallest run's peak; two workers at least 1.7x one) are checked at the
end, each line saying PASS or MISS with the numbers.

Usage::

    python benchmarks/bench_scale.py [--sizes 1000,5000,20000]
        [--large-sizes 1000] [--workers-n 5000] [--backbone resnet18]
        [--image-size 112] [--folder DIR]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

OPS = ("extract", "fit frozen", "fit unfreeze=1", "predict")
FORMATS = {"640x480": (640, 480), "12 MP": (4000, 3000)}


# -- the child: one operation, measured --------------------------------------


class _MemorySampler(threading.Thread):
    """Peak RssAnon of this process, sampled every 20 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak_kib = 0
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(0.02):
            self.peak_kib = max(self.peak_kib, _status_kib("RssAnon"))

    def stop(self):
        self._done.set()
        self.join()
        return self.peak_kib / 1024


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _params(args):
    return dict(backbone=args.backbone, weights=None, random_state=0,
                image_size=args.image_size, device="cpu",
                num_workers=args.num_workers, batch_size=64)


def _child(args):
    import warnings

    import torch

    from sktransfer import (
        PretrainedCNNClassifier,
        PretrainedFeatureExtractor,
        dask_predict,
    )

    # Features beyond cache_max_gb must be memory-mapped, never recomputed.
    warnings.filterwarnings("error", message=".*will run every epoch")
    paths = np.array(json.load(open(args.paths_file)), dtype=object)
    labels = np.arange(len(paths)) % 4
    params = _params(args)
    sampler = _MemorySampler()
    if args.op == "predict":  # fitted beforehand, not timed
        clf = PretrainedCNNClassifier(**params, max_epochs=1, cache=False)
        clf.fit(paths[:64], labels[:64])
    elif args.op.startswith("dask"):
        import dask.array as da
        from dask.distributed import Client, LocalCluster

        n_workers = int(args.op.split("-")[1])
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
        extractor = PretrainedFeatureExtractor(**{**params, "num_workers": 0})
        extractor.fit(paths[:1])
        blocks = da.from_array(paths, chunks=max(len(paths) // 16, 1))
    sampler.start()
    start = time.perf_counter()
    if args.op == "extract":
        est = PretrainedFeatureExtractor(**params, cache=False).fit(paths[:1])
        start = time.perf_counter()  # the model build is not extraction
        out = est.transform(paths)
    elif args.op == "fit frozen":
        est = PretrainedCNNClassifier(**params, max_epochs=3).fit(paths, labels)
        out = None
    elif args.op == "fit unfreeze=1":
        # Beyond cache_max_gb: the features are memory-mapped from disk.
        est = PretrainedCNNClassifier(**params, max_epochs=3, unfreeze=1,
                                      cache_max_gb=0.01).fit(paths, labels)
        out = None
    elif args.op == "predict":
        est = clf
        out = clf.predict(paths)
    else:
        est = extractor
        out = dask_predict(extractor, blocks, "transform").compute()
    wall = time.perf_counter() - start
    peak_anon = sampler.stop()
    if args.op.startswith("dask"):
        client.close()
        cluster.close()
    dtype = getattr(est, "frozen_dtype_", None)
    if args.op == "fit frozen":
        # The training features, and their copy in the process-wide cache
        # of cache="auto" (kept for the next fit on the same images).
        itemsize = 2 if dtype in (torch.bfloat16, torch.float16) else 4
        held = 2 * len(paths) * est.n_features_out_ * itemsize
    elif args.op in ("extract",) or args.op.startswith("dask"):
        held = int(np.asarray(out).nbytes)  # the output itself
    else:  # unfreeze=1: features memory-mapped from disk; predict: labels
        held = 0
    print(json.dumps({
        "wall": wall, "peak_anon_mib": peak_anon,
        "vm_hwm_mib": _status_kib("VmHWM") / 1024,
        "precision": {None: "fp32", torch.bfloat16: "bf16",
                      torch.float16: "fp16"}[dtype],
        "held_bytes": held,
    }))


# -- the parent: images, runs, table ------------------------------------------


def _unique_images(folder, size, n_unique):
    from _common import make_images

    return make_images(os.path.join(folder, f"unique_{size[0]}x{size[1]}"),
                       n_unique, size=size)[0]


def _linked(folder, unique, n, tag):
    """n paths, hard links to the unique images in turn."""
    target = os.path.join(folder, f"links_{tag}_{n}")
    os.makedirs(target, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(target, f"img_{i:06d}.jpg")
        if not os.path.exists(path):
            os.link(unique[i % len(unique)], path)
        paths.append(path)
    return paths


def _run(args, op, paths, num_workers=0):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(paths, f)
    command = [sys.executable, __file__, "--child", op, "--paths-file", f.name,
               "--backbone", args.backbone, "--image-size", str(args.image_size),
               "--num-workers", str(num_workers)]
    env = dict(os.environ, TMPDIR=args.folder)  # spilled features go there
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    os.unlink(f.name)
    if done.returncode:
        sys.exit(f"{op} on {len(paths)} images failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {op}, n={len(paths)}, workers={num_workers}: "
          f"{result['wall']:.1f} s", file=sys.stderr, flush=True)
    return result


def _check(name, ok, detail):
    print(f"{'PASS' if ok else 'MISS'}  {name}: {detail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--large-sizes", default="1000",
                        help="n for the 12 MP images (extract and predict)")
    parser.add_argument("--workers-n", type=int, default=5000)
    parser.add_argument("--unique", type=int, default=300)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--folder", default=None)
    parser.add_argument("--ops", default=",".join(OPS),
                        help="operations of the first table")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--child", default=None)
    parser.add_argument("--paths-file", default=None)
    args = parser.parse_args(argv)
    if args.child:
        args.op = args.child
        return _child(args)
    args.folder = args.folder or tempfile.mkdtemp(prefix="sktransfer-scale-")
    sizes = [int(s) for s in args.sizes.split(",")]
    large = [int(s) for s in args.large_sizes.split(",") if s]
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"load average {load:.1f} at start; {args.backbone} (random weights) "
          f"at {args.image_size} px, batch 64; images: {args.unique} unique "
          "photo-like JPEGs (quality 90) hard-linked to n files\n")
    print("| images | n | operation | precision | wall s | ms/image "
          "| peak RssAnon MiB | VmHWM MiB |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    results = {}
    for fmt, size in FORMATS.items():
        unique = _unique_images(args.folder, size, args.unique if fmt == "640x480"
                                else min(args.unique, 50))
        fmt_sizes = sizes if fmt == "640x480" else large
        ops = [op for op in args.ops.split(",")
               if fmt == "640x480" or op in ("extract", "predict")]
        for n in fmt_sizes:
            paths = _linked(args.folder, unique, n, fmt.replace(" ", ""))
            for op in ops:
                r = results[fmt, n, op] = _run(args, op, paths)
                print(f"| {fmt} | {n:,} | {op} | {r['precision']} | "
                      f"{r['wall']:.1f} | {1000 * r['wall'] / n:.2f} | "
                      f"{r['peak_anon_mib']:.0f} | {r['vm_hwm_mib']:.0f} |",
                      flush=True)
    if args.workers_n == 0:  # no parallelism table
        return _checks(args, sizes, results, {})
    paths = _linked(args.folder, _unique_images(args.folder, (640, 480),
                                                 args.unique),
                    args.workers_n, "640x480")
    print("\n| parallelism (640x480, n = "
          f"{args.workers_n:,}, extraction) | precision | wall s | images/s |")
    print("|---|---|---:|---:|")
    rates = {}
    for label, op, workers in (
        ("1 decoding worker", "extract", 1), ("2 decoding workers", "extract", 2),
        ("LocalCluster, 1 worker", "dask-1", 0),
        ("LocalCluster, 2 workers", "dask-2", 0),
    ):
        r = _run(args, op, paths, num_workers=workers)
        rates[label] = args.workers_n / r["wall"]
        print(f"| {label} | {r['precision']} | {r['wall']:.1f} | "
              f"{rates[label]:.0f} |", flush=True)
    return _checks(args, sizes, results, rates)


def _checks(args, sizes, results, rates):
    print()
    lo, hi = sizes[0], sizes[-1]
    for op in args.ops.split(","):
        t_lo = results["640x480", lo, op]["wall"] / lo
        t_hi = results["640x480", hi, op]["wall"] / hi
        _check(f"{op}: time per image constant within 15% ({lo:,} to {hi:,})",
               abs(t_hi / t_lo - 1) <= 0.15,
               f"{1000 * t_lo:.2f} -> {1000 * t_hi:.2f} ms/image "
               f"(x{t_hi / t_lo:.2f})")
        r_lo, r_hi = results["640x480", lo, op], results["640x480", hi, op]
        growth = r_hi["peak_anon_mib"] - r_lo["peak_anon_mib"]
        extra = (r_hi["held_bytes"] - r_lo["held_bytes"]) / 2**20
        allowed = extra + 0.1 * r_lo["peak_anon_mib"]
        _check(f"{op}: peak memory growth <= extra features + 10%",
               growth <= allowed,
               f"+{growth:.0f} MiB RssAnon; extra features {extra:.0f} MiB, "
               f"allowed {allowed:.0f} MiB")
    for kind in ("decoding worker", "LocalCluster") if rates else ():
        one = next(v for k, v in rates.items() if kind in k and "1 " in k)
        two = next(v for k, v in rates.items() if kind in k and "2 " in k)
        _check(f"{kind}s: two at least 1.7x one", two / one >= 1.7,
               f"{one:.0f} -> {two:.0f} images/s (x{two / one:.2f})")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
