"""Frozen features of a fit computed on a two-process LocalCluster, then read."""

import sys

import numpy as np
import pytest

from sktransfer import (
    PretrainedCNNClassifier,
    cache_features,
    dask_cache_features,
    dask_predict,
)
from sktransfer._cluster_cache import _worker_pass

distributed = pytest.importorskip("dask.distributed")
da = pytest.importorskip("dask.array")
cloudpickle = pytest.importorskip("cloudpickle")

# The functions run on the workers by client.run travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# resnet18, not tiny_cnn: the workers only know the built-in backbones.
PARAMS = dict(backbone="resnet18", weights=None, image_size=32, max_epochs=2,
              batch_size=8, device="cpu", random_state=0, num_workers=0)


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


def _reset_worker_counts():
    """Count estimators unpickled and frozen passes built from now on."""
    from sktransfer.io._pickle import PickleSupportMixin

    _worker_pass.cache_clear()
    # Wrapped once per worker process, however often a test resets the count.
    if not hasattr(PickleSupportMixin, "original_setstate"):
        PickleSupportMixin.original_setstate = PickleSupportMixin.__setstate__
    original = PickleSupportMixin.original_setstate
    PickleSupportMixin.n_unpickled = 0

    def counting(self, state):
        PickleSupportMixin.n_unpickled += 1
        original(self, state)

    PickleSupportMixin.__setstate__ = counting


def _n_unpickled():
    from sktransfer.io._pickle import PickleSupportMixin

    return PickleSupportMixin.n_unpickled


def _worker_pass_builds():
    return _worker_pass.cache_info().misses


@pytest.mark.slow
@pytest.mark.parametrize("unfreeze", [0, 1])
def test_fit_reads_what_the_workers_computed(client, colour_images, tmp_path,
                                             fit_from_cache_only, unfreeze):
    X, y = colour_images
    # precision="auto": the workers follow this process's resolution.
    params = dict(PARAMS, unfreeze=unfreeze, precision="auto")
    reference = PretrainedCNNClassifier(**params, cache=False).fit(X, y)
    clf = PretrainedCNNClassifier(**params, cache=str(tmp_path))
    client.run(_reset_worker_counts)
    errors = dask_cache_features(clf, da.from_array(X, chunks=5))  # 5 blocks
    assert errors == []
    # The estimator reached each worker once, and a worker built its frozen
    # part at most once for all its blocks (the scheduler decides which
    # worker runs how many).
    assert sorted(client.run(_n_unpickled).values()) == [1, 1]
    builds = list(client.run(_worker_pass_builds).values())
    assert max(builds) == 1 and sum(builds) >= 1
    fit_from_cache_only(clf, X, y)
    np.testing.assert_allclose(clf.predict_proba(X), reference.predict_proba(X),
                               atol=1e-6)


@pytest.mark.slow
def test_dask_predict_unpickles_the_model_once_per_worker(client, colour_images):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**PARAMS, precision="fp32").fit(X, y)
    client.run(_reset_worker_counts)
    predicted = dask_predict(clf, da.from_array(X, chunks=3)).compute()  # 8 blocks
    np.testing.assert_array_equal(predicted, clf.predict(X))
    assert sorted(client.run(_n_unpickled).values()) == [1, 1]


@pytest.mark.slow
def test_bad_images_are_reported_with_their_paths(client, colour_images, tmp_path):
    X, _ = colour_images
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    paths = np.append(X[:4], str(broken)).astype(object)
    clf = PretrainedCNNClassifier(**PARAMS, cache=str(tmp_path / "cache"))
    errors = dask_cache_features(clf, da.from_array(paths, chunks=2))
    assert [path for path, _ in errors] == [str(broken)]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        (dict(cache="auto"), "cache= a directory"),
        (dict(cache=False), "cache= a directory"),
        (dict(augment="classic"), "augment='classic'"),
        (dict(random_state=None), "set an int random_state"),
    ],
)
def test_refusals_say_what_to_change(params, match, tmp_path):
    clf = PretrainedCNNClassifier(**{**PARAMS, "cache": str(tmp_path), **params})
    paths = da.from_array(np.array(["a.png"], dtype=object), chunks=1)
    with pytest.raises(ValueError, match=match):
        dask_cache_features(clf, paths)


def test_local_array_is_refused(tmp_path):
    clf = PretrainedCNNClassifier(**PARAMS, cache=str(tmp_path))
    with pytest.raises(TypeError, match="1-D dask array"):
        dask_cache_features(clf, np.array(["a.png"]))


def test_cache_features_in_this_process_then_fit(colour_images, tmp_path,
                                                 fit_from_cache_only):
    # The engine-agnostic step: any worker that sees the directory can run it.
    X, y = colour_images
    params = dict(PARAMS, precision="fp32", cache=str(tmp_path))
    clf = PretrainedCNNClassifier(**params)
    assert cache_features(clf, X[:10]) == []
    assert cache_features(clf, X[10:], precision="fp32") == []
    reference = PretrainedCNNClassifier(**{**params, "cache": False}).fit(X, y)
    fit_from_cache_only(clf, X, y)
    np.testing.assert_allclose(clf.predict_proba(X), reference.predict_proba(X),
                               atol=1e-6)
    # A fit in another precision has another key: nothing is found for it.
    other = PretrainedCNNClassifier(**{**params, "precision": "bf16"})
    with pytest.raises(AssertionError, match="cache was not used"):
        fit_from_cache_only(other, X, y)
