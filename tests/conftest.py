import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sktransfer import BackboneSpec, _runtime, clear_feature_cache, register_backbone
from sktransfer._transforms import Preprocessing
from sktransfer.backbones import BackboneParts
from sktransfer.backbones._weights import file_sha256, load_state_dict_file

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture(autouse=True)
def _seed_and_isolate(monkeypatch):
    """Seed every RNG, start each test with an empty in-memory cache, and
    make precision="auto" independent of this machine's CPU (no native bf16
    unless a test asks for it through ``cpu_native_bf16``)."""
    monkeypatch.setattr(_runtime, "cpu_has_fast_bf16", lambda: False)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    clear_feature_cache()
    yield
    clear_feature_cache()


@pytest.fixture(params=[False, True], ids=["cpu-without-bf16", "cpu-with-bf16"])
def cpu_native_bf16(request, monkeypatch):
    """Run a test as on a CPU without, then with, native bf16 units."""
    monkeypatch.setattr(_runtime, "cpu_has_fast_bf16", lambda: request.param)
    return request.param


def _conv_block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _build_tiny(weights):
    """A 3-block CNN so most tests need no large model."""
    blocks = [_conv_block(3, 8), _conv_block(8, 16), _conv_block(16, 16)]
    if weights is not None:
        raise ValueError("tiny_cnn has no pretrained weights; use weights=None")
    prep = Preprocessing(
        resize_size=36, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return BackboneParts(blocks, neck, 16, prep, "random")


register_backbone(
    BackboneSpec(
        name="tiny_cnn", family="test", build=_build_tiny, n_blocks=3, source="test"
    ),
    overwrite=True,
)


def _build_tiny_from_file(weights):
    """tiny_cnn whose weights come from a local state-dict file."""
    parts = _build_tiny(None)
    if weights is None:
        return parts
    blocks = nn.Sequential(*parts.blocks)
    blocks.load_state_dict(load_state_dict_file(weights))
    return BackboneParts(list(blocks), parts.neck, parts.feature_dim,
                         parts.preprocessing, f"file:sha256:{file_sha256(weights)}")


register_backbone(
    BackboneSpec(name="tiny_file", family="test", build=_build_tiny_from_file,
                 source="test"),
    overwrite=True,
)


def make_colour_images(folder, n_per_class, classes=("red", "green"), size=(40, 30),
                       fmt="png", seed=0):
    """Noisy solid-colour images, one class per colour; returns paths, labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for label in classes:
        for i in range(n_per_class):
            arr = np.empty((size[1], size[0], 3), dtype=np.uint8)
            arr[:] = COLOURS[label]
            noise = rng.integers(-30, 30, arr.shape)
            arr = np.clip(arr.astype(int) + noise, 0, 255).astype(np.uint8)
            path = folder / f"{label}_{i}.{fmt}"
            Image.fromarray(arr).save(path)
            paths.append(str(path))
            labels.append(label)
    return np.array(paths, dtype=object), np.array(labels)


@pytest.fixture(scope="session")
def colour_images(tmp_path_factory):
    """24 small PNGs in two classes ("red", "green")."""
    return make_colour_images(tmp_path_factory.mktemp("colours"), 12)


@pytest.fixture(scope="session")
def three_class_images(tmp_path_factory):
    """30 small JPEGs in three classes."""
    return make_colour_images(
        tmp_path_factory.mktemp("three"), 10, classes=("red", "green", "blue"),
        fmt="jpg",
    )


@pytest.fixture
def tiny_params():
    """Parameters for a fast, deterministic fit of the tiny backbone.

    The head trains in the epoch loop, which most tests are about; the
    L-BFGS head fit has tests of its own (test_probe.py).
    """
    return dict(
        backbone="tiny_cnn", weights=None, max_epochs=3, lr=0.05, batch_size=8,
        random_state=0, device="cpu", num_workers=0, head_solver="epochs",
    )


@pytest.fixture(scope="module")
def dask_client():
    """A two-process LocalCluster, one thread a worker, for one test module."""
    distributed = pytest.importorskip("dask.distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def fit_from_cache_only(monkeypatch):
    """``fit(estimator, X, y)`` that fails if it runs the frozen part.

    The process-wide memory cache is emptied first, so only a disk cache can
    serve the features.
    """
    import sktransfer._frozen

    def refuse(*args, **kwargs):
        raise AssertionError("fit ran the frozen part: the cache was not used")

    def fit(estimator, X, y):
        clear_feature_cache()
        with monkeypatch.context() as patch:
            patch.setattr(sktransfer._frozen, "_run_frozen", refuse)
            return estimator.fit(X, y)

    return fit
