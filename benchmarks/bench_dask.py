"""Grid search on a local Dask cluster against the same search in one process.

Runs the search three ways on the same generated images: ``n_jobs=1`` in
this process, on a two-worker ``LocalCluster`` with Dask's default worker
environment, and on one whose workers do not get ``MALLOC_TRIM_THRESHOLD_``
(see docs/scaling.md). Run with ``OMP_NUM_THREADS=1`` so the local search
uses one thread per process, as each Dask worker does:
``OMP_NUM_THREADS=1 python benchmarks/bench_dask.py``.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import dask
import joblib
from _common import make_images
from dask.distributed import Client, LocalCluster
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sktransfer import PretrainedCNNClassifier

PARAMS = dict(
    backbone="resnet18", weights=None, image_size=64, unfreeze=1, max_epochs=5,
    batch_size=8, precision="fp32", device="cpu", num_workers=0, random_state=0,
)
GRID = {"lr": [0.005, 0.05], "hidden_layer_sizes": [(), (8,)]}
THREADS_ONLY = {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1,
                "OPENBLAS_NUM_THREADS": 1}


def search(X, y, **params):
    cv = StratifiedKFold(2, shuffle=True, random_state=0)
    start = time.perf_counter()
    result = GridSearchCV(PretrainedCNNClassifier(**PARAMS, **params), GRID, cv=cv)
    result.fit(X, y)
    return time.perf_counter() - start, result.best_params_


def on_dask(X, y, cache):
    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1",
        dashboard_address=None,
    ) as cluster, Client(cluster), joblib.parallel_backend("dask"):
        return search(X, y, cache=cache)


def _dask_child(folder, n_images, environ):
    # Worker processes inherit the malloc settings of the first one Dask
    # starts in a process, so each variant runs in a fresh process.
    if environ == "threads-only":
        dask.config.set({"distributed.nanny.pre-spawn-environ": THREADS_ONLY})
    X, y = make_images(f"{folder}/images", n_images, size=(80, 64))
    seconds, best = on_dask(X, y, f"{folder}/cache-{environ}")
    print(json.dumps({"seconds": seconds, "best": repr(best)}))


def dask_search(folder, n_images, environ):
    out = subprocess.run(
        [sys.executable, __file__, "--dask", folder, str(n_images), environ],
        check=True, capture_output=True, text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["seconds"], result["best"]


def main(n_images=64):
    folder = tempfile.mkdtemp(prefix="sktransfer-bench-")
    X, y = make_images(f"{folder}/images", n_images, size=(80, 64))
    local, best = search(X, y)
    default, best_default = dask_search(folder, n_images, "default")
    tuned, best_tuned = dask_search(folder, n_images, "threads-only")
    assert repr(best) == best_default == best_tuned, (best, best_default, best_tuned)
    print(f"resnet18, unfreeze=1, {n_images} JPEGs at 64 px, 4 candidates x 2 "
          f"folds, 5 epochs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"  n_jobs=1, one process:            {local:6.1f} s")
    print(f"  Dask, 2 workers, default environ: {default:6.1f} s "
          f"(local / Dask {local / default:.2f})")
    print(f"  Dask, 2 workers, no malloc trim:  {tuned:6.1f} s "
          f"(local / Dask {local / tuned:.2f})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--dask"]:
        _dask_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)
