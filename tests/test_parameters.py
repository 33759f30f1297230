"""Every documented value of every parameter of PretrainedCNNClassifier fits.

One fit per documented value (tiny backbone, tiny images, two epochs), so a
value the docstring promises cannot crash at fit time unnoticed, as
``cache=True`` once did.
"""

import shutil

import joblib
import numpy as np
import pytest
import torch
from conftest import _build_tiny, make_colour_images
from skorch.callbacks import Callback
from torch import nn
from torchvision.transforms import v2

from sktransfer import PretrainedCNNClassifier


class _Noop(Callback):
    pass


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_colour_images(tmp_path_factory.mktemp("params"), 6, size=(24, 20))


@pytest.fixture
def base():
    return dict(backbone="tiny_cnn", weights=None, max_epochs=2, batch_size=4,
                random_state=0, device="cpu", num_workers=0)


def _weights_file(tmp_path, suffix):
    blocks = nn.Sequential(*_build_tiny(None).blocks)
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".pth":
        torch.save(blocks.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in blocks.state_dict().items()}, path)
    return str(path)


# (parameter, value); values named "<...>" are built inside the test.
DOCUMENTED = [
    ("weights", None), ("weights", "<.pth file>"), ("weights", "<.safetensors file>"),
    ("unfreeze", 0), ("unfreeze", 1), ("unfreeze", "all"),
    ("hidden_layer_sizes", ()), ("hidden_layer_sizes", (8,)),
    ("hidden_layer_sizes", [8, 4]),
    ("dropout", 0.0), ("dropout", 0.5),
    ("head_solver", "auto"), ("head_solver", "lbfgs"), ("head_solver", "epochs"),
    ("C", 0.01), ("C", 1.0),
    ("layer_decay", 0.5), ("layer_decay", 1.0),
    ("lr_schedule", "constant"), ("lr_schedule", "cosine"),
    ("warmup_fraction", 0.0), ("warmup_fraction", 0.3),
    ("label_smoothing", 0.0), ("label_smoothing", 0.1),
    ("max_epochs", 1),
    ("lr", 1e-2),
    ("backbone_lr_ratio", 0.0), ("backbone_lr_ratio", 0.5),
    ("batch_size", 1), ("batch_size", 32),
    ("inference_batch_size", None), ("inference_batch_size", 3),
    ("optimizer", "adamw"), ("optimizer", "adam"), ("optimizer", "sgd"),
    ("optimizer", torch.optim.SGD), ("optimizer", torch.optim.RMSprop),
    ("image_size", None), ("image_size", 16), ("image_size", 40),
    ("augment", False), ("augment", True), ("augment", "light"),
    ("augment", "classic"), ("augment", "trivialaugment"),
    ("augment", "<v2 transform>"),
    ("augment_views", None), ("augment_views", 2),
    ("tta", False), ("tta", True), ("tta", "flip"), ("tta", "crops"),
    ("early_stopping", False), ("early_stopping", True),
    ("validation_fraction", 0.3), ("n_iter_no_change", 1),
    ("class_weight", None), ("class_weight", "balanced"),
    ("class_weight", {"red": 1.0, "green": 3.0}),
    ("batchnorm", "auto"), ("batchnorm", "frozen"), ("batchnorm", "train"),
    ("cache", "auto"), ("cache", True), ("cache", False), ("cache", "<dir>"),
    ("cache", "<pathlib dir>"), ("cache", "<joblib.Memory>"),
    ("cache", "<Memory(None)>"),
    ("cache_max_gb", 4.0), ("cache_max_gb", 1e-9),
    ("precision", "auto"), ("precision", "fp32"), ("precision", "bf16"),
    ("compile", False),
    ("device", "auto"), ("device", "cpu"),
    ("num_workers", None), ("num_workers", 0), ("num_workers", 1),
    ("on_bad_image", "raise"), ("on_bad_image", "skip"),
    ("max_image_pixels", None), ("max_image_pixels", 10_000),
    ("intensity", "auto"), ("intensity", "bit_depth"), ("intensity", "minmax"),
    ("intensity", "percentile"), ("intensity", (10, 200)),
    ("channels", "rgb"), ("channels", "grey"),
    ("net_params", None), ("net_params", {"optimizer__weight_decay": 0.01}),
    ("net_params", {"callbacks": [("noop", _Noop())]}),
    ("warm_start", False), ("warm_start", True),
    ("random_state", None), ("random_state", 0), ("random_state", "<RandomState>"),
    ("verbose", 0), ("verbose", 1),
]


def _value(name, value, tmp_path):
    if value == "<.pth file>":
        return _weights_file(tmp_path, ".pth")
    if value == "<.safetensors file>":
        return _weights_file(tmp_path, ".safetensors")
    if value == "<dir>":
        return str(tmp_path / "cache")
    if value == "<pathlib dir>":
        return tmp_path / "cache"
    if value == "<joblib.Memory>":
        return joblib.Memory(tmp_path / "memory", verbose=0)
    if value == "<Memory(None)>":
        return joblib.Memory(None, verbose=0)
    if value == "<v2 transform>":
        return v2.RandomRotation(10)
    if value == "<RandomState>":
        return np.random.RandomState(0)
    return value


@pytest.mark.filterwarnings("ignore::UserWarning")  # e.g. cache_max_gb fallback
@pytest.mark.parametrize("name, value", DOCUMENTED,
                         ids=[f"{n}={v!r}"[:60] for n, v in DOCUMENTED])
def test_every_documented_value_fits(images, base, tmp_path, name, value):
    X, y = images
    params = dict(base)
    if name == "weights" and value is not None:
        params["backbone"] = "tiny_file"
    params[name] = _value(name, value, tmp_path)
    clf = PretrainedCNNClassifier(**params).fit(X, y)
    if name == "warm_start" and value:
        n_before = len(clf.history_)
        clf.fit(X, y)  # continues, in the epoch loop
        assert len(clf.history_) == n_before + params["max_epochs"]
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    assert np.isfinite(proba).all()
    assert clf.get_params()[name] is params[name] or name == "cache"


def test_on_bad_image_skip_and_raise_with_a_bad_file(images, base, tmp_path):
    X, y = images
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    X = np.append(X, str(bad))
    y = np.append(y, "red")
    with pytest.raises(ValueError, match="bad.png"):
        PretrainedCNNClassifier(**base).fit(X, y)
    with pytest.warns(UserWarning, match="Skipped 1"):
        clf = PretrainedCNNClassifier(**base, on_bad_image="skip").fit(X, y)
    assert clf.n_train_images_ == len(X) - 1


def test_fp16_on_cpu_is_a_clear_error(images, base):
    with pytest.raises(ValueError, match="precision='fp16' needs a CUDA device"):
        PretrainedCNNClassifier(**base, precision="fp16").fit(*images)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_true_fits(images, base):
    clf = PretrainedCNNClassifier(**base, compile=True).fit(*images)
    assert clf.predict(images[0]).shape == (len(images[0]),)
