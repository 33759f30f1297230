"""Run every benchmark and print one table (``make bench``).

Usage: ``python benchmarks/run_all.py [--images N] [--rss-images M]``.
Ratios are measured side by side in one run on the same generated images.
"""

import argparse
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_memory  # noqa: E402
import bench_speed  # noqa: E402
import torch  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rss-images", type=int, default=2000)
    args = parser.parse_args()
    start = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="sktransfer-bench-")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"CUDA: {torch.cuda.is_available()}")
    print(f"speed: {bench_speed.BACKBONE}, weights=None, {args.images} JPEGs "
          f"320x256 -> 224 crop; memory: {bench_memory.BACKBONE}, "
          f"{args.rss_images} JPEGs 256x224\n", flush=True)
    rows, seconds = bench_speed.run(args.images, folder)
    rss_rows, _ = bench_memory.run(args.rss_images, folder)
    print(f"| {'benchmark':60s} | {'value':>8s} | target |")
    print(f"|{'-' * 62}|{'-' * 10}|--------|")
    for name, value, target in rows + rss_rows:
        print(f"| {name:60s} | {value:8.2f} | {target} |")
    print("\nseconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
