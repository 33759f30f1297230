"""Grid search on a Dask cluster gives the same results as a local run."""

import time

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sktransfer import PretrainedCNNClassifier, _runtime


def test_auto_device_spreads_dask_workers_over_gpus(monkeypatch):
    # No GPU here: fake four visible devices and check the documented choice.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(_runtime, "_dask_worker_rank", lambda: 5)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _runtime.resolve_device("auto") == "cuda:1"
    assert _runtime.resolve_device("cuda:3") == "cuda:3"
    monkeypatch.setattr(_runtime, "_dask_worker_rank", lambda: None)
    assert _runtime.resolve_device("auto") == "cuda"  # not in a worker
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(_runtime, "_dask_worker_rank", lambda: 5)
    assert _runtime.resolve_device("auto") == "cuda"  # CUDA_VISIBLE_DEVICES=one GPU


@pytest.mark.slow
def test_grid_search_on_dask_matches_local(colour_images, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    paths, labels = colour_images
    # tiny_cnn is registered only in this process; workers know resnet18.
    # The default num_workers, with batches small enough that it would start
    # loader processes, which Dask's daemonic workers may not have.
    params = dict(
        backbone="resnet18", weights=None, image_size=32, max_epochs=2,
        batch_size=8, inference_batch_size=4, precision="fp32", device="cpu",
        random_state=0,
    )
    grid = {"lr": [0.005, 0.05], "hidden_layer_sizes": [(), (8,)]}
    cv = StratifiedKFold(2, shuffle=True, random_state=0)

    start = time.perf_counter()
    local = GridSearchCV(PretrainedCNNClassifier(**params), grid, cv=cv, n_jobs=1)
    local.fit(paths, labels)
    local_seconds = time.perf_counter() - start

    shared = tmp_path / "shared-cache"
    remote_params = dict(params, cache=str(shared))
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        with distributed.Client(cluster) as client:
            # Inside a task, each worker knows its rank (what device="auto"
            # uses to pick a GPU).
            ranks = [
                client.submit(_runtime._dask_worker_rank, workers=[address],
                              pure=False).result()
                for address in client.scheduler_info()["workers"]
            ]
            start = time.perf_counter()
            with joblib.parallel_backend("dask"):
                remote = GridSearchCV(
                    PretrainedCNNClassifier(**remote_params), grid, cv=cv,
                    n_jobs=-1,
                )
                remote.fit(paths, labels)
            dask_seconds = time.perf_counter() - start
            threads = client.run(torch.get_num_threads)
    finally:
        cluster.close()
    print(f"\nGridSearchCV, 4 candidates x 2 folds: local n_jobs=1 "
          f"{local_seconds:.1f} s, Dask 2 workers {dask_seconds:.1f} s")

    assert sorted(ranks) == [0, 1]
    assert set(threads.values()) == {1}  # one torch thread per 1-thread worker
    assert remote.best_params_ == local.best_params_
    for key in ["mean_test_score", "split0_test_score", "split1_test_score"]:
        np.testing.assert_allclose(remote.cv_results_[key], local.cv_results_[key])
    assert remote.best_estimator_.score(paths, labels) == pytest.approx(
        local.best_estimator_.score(paths, labels)
    )
    # The workers filled the shared on-disk cache: one entry per image, since
    # every candidate has the same frozen backbone.
    assert len(list(shared.rglob("*.feat"))) == len(paths)
