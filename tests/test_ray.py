"""The Ray recipes of docs/scaling.md, on a local two-CPU Ray instance.

Skipped where Ray is not installed (it is an optional extra, not a test
dependency).
"""

import sys

import numpy as np
import pytest

from sktransfer import PretrainedCNNClassifier, cache_features
from sktransfer._cluster_cache import _worker_pass

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

# Ray's workers cannot import this file: its classes travel by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

PARAMS = dict(backbone="resnet18", weights=None, image_size=32, max_epochs=2,
              batch_size=8, device="cpu", random_state=0, num_workers=0,
              precision="fp32")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class _CacheFiller:
    """A Ray actor that keeps the estimator, so builds its frozen part once."""

    def __init__(self, estimator):
        self.estimator = estimator

    def fill(self, paths):
        return cache_features(self.estimator, paths)

    def builds(self):
        return _worker_pass.cache_info().misses


class _Predict:
    def __init__(self, model):
        self.model = model

    def __call__(self, batch):
        return {"path": batch["path"], "label": self.model.predict(batch["path"])}


@pytest.mark.slow
def test_ray_actors_fill_the_cache_that_fit_reads(local_ray, colour_images,
                                                  tmp_path, fit_from_cache_only):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**PARAMS, cache=str(tmp_path))
    filler = ray.remote(num_cpus=1)(_CacheFiller)
    estimator = ray.put(clf)
    actors = [filler.remote(estimator) for _ in range(2)]
    blocks = np.array_split(X, 6)
    errors = ray.get([actors[i % 2].fill.remote(b) for i, b in enumerate(blocks)])
    assert errors == [[]] * 6
    assert ray.get([a.builds.remote() for a in actors]) == [1, 1]
    for actor in actors:
        ray.kill(actor)  # give their CPUs back
    reference = PretrainedCNNClassifier(**PARAMS, cache=False).fit(X, y)
    fit_from_cache_only(clf, X, y)
    np.testing.assert_allclose(clf.predict_proba(X), reference.predict_proba(X),
                               atol=1e-6)


@pytest.mark.slow
def test_ray_data_predict_equals_local(local_ray, colour_images):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**PARAMS).fit(X, y)
    dataset = ray.data.from_items([{"path": p} for p in X]).map_batches(
        _Predict, fn_constructor_args=(clf,), batch_size=8,
        compute=ray.data.ActorPoolStrategy(size=2),
    )
    rows = sorted(dataset.take_all(), key=lambda row: list(X).index(row["path"]))
    np.testing.assert_array_equal([row["label"] for row in rows], clf.predict(X))
