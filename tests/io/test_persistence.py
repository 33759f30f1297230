"""Pickle round trips, CPU-only loading, version stamps and the safe format."""

import ast
import json
import pickle
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from conftest import _build_tiny
from safetensors.torch import load_file
from torch import nn

import sktransfer
from sktransfer import (
    InconsistentVersionWarning,
    ModelFileError,
    PretrainedCNNClassifier,
)
from sktransfer.backbones._weights import file_sha256
from sktransfer.io import _pickle


@pytest.fixture
def fitted(colour_images, tiny_params):
    X, y = colour_images
    return PretrainedCNNClassifier(**tiny_params).fit(X, y), X


@pytest.fixture
def weights_file(tmp_path):
    torch.manual_seed(123)
    blocks = nn.Sequential(*_build_tiny(None).blocks)
    path = tmp_path / "tiny.pth"
    torch.save(blocks.state_dict(), path)
    return path


# -- pickle ---------------------------------------------------------------------


def test_joblib_round_trip(fitted, tmp_path):
    clf, X = fitted
    joblib.dump(clf, tmp_path / "m.joblib")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same versions: no warning at all
        loaded = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.weights_id_ == clf.weights_id_
    assert loaded.preprocessing_ == clf.preprocessing_
    assert loaded.get_params() == clf.get_params()


def test_gpu_model_loads_on_cpu_only_machine(fitted, monkeypatch):
    clf, X = fitted
    expected = clf.predict_proba(X)
    clf.device_ = "cuda"  # as if fitted on a GPU; the tensors are on the CPU
    data = pickle.dumps(clf)
    clf.device_ = "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="fitted on 'cuda' but no CUDA device"):
        loaded = pickle.loads(data)
    assert loaded.device_ == "cpu"
    assert loaded.frozen_dtype_ is None or loaded.frozen_dtype_ != torch.float16
    np.testing.assert_allclose(loaded.predict_proba(X), expected, atol=1e-6)


def _tensors_in(value, seen=None):
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v, seen)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            yield from _tensors_in(v, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield from _tensors_in(vars(value), seen)


def test_no_device_tensor_hides_in_the_pickle_state(fitted):
    clf, _ = fitted
    clf.extra_ = {"stats": [torch.ones(2)]}  # a tensor outside the module
    state = clf.__getstate__()
    assert not any(isinstance(v, nn.Module) for v in state.values())
    tensors = list(_tensors_in(state))
    assert len(tensors) > len(clf.model_.state_dict()) - 1
    assert all(t.device.type == "cpu" for t in tensors)
    del clf.extra_


def test_changed_versions_warn(fitted, monkeypatch):
    clf, X = fitted
    real = _pickle.library_versions()
    monkeypatch.setattr(_pickle, "library_versions",
                        lambda: {**real, "torch": "1.0.0"})
    data = pickle.dumps(clf)
    monkeypatch.undo()
    with pytest.warns(InconsistentVersionWarning, match=r"torch 1.0.0 -> "):
        loaded = pickle.loads(data)
    assert loaded.predict(X[:2]).shape == (2,)


# -- safe format ------------------------------------------------------------------


def test_safe_round_trip(fitted, tmp_path):
    clf, X = fitted
    out = clf.save(tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json",
                                                      "model.safetensors"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {"dtype": clf.classes_.dtype.str,
                                   "values": ["green", "red"]}
    assert manifest["backbone"]["name"] == "tiny_cnn"
    assert manifest["backbone"]["weights_id"] == "random"
    assert manifest["preprocessing"]["crop_size"] == 32
    assert manifest["library_versions"]["torch"].startswith(torch.__version__[:4])
    assert manifest["files"]["model.safetensors"]["sha256"] == file_sha256(
        out / "model.safetensors")
    assert manifest["params"]["lr"] == 0.05
    loaded = PretrainedCNNClassifier.load(out)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    assert loaded.classes_.dtype == clf.classes_.dtype
    assert loaded.get_params() == clf.get_params()
    assert loaded.n_train_images_ == clf.n_train_images_


@pytest.mark.parametrize("labels", [[3, 7], [True, False], [-1.0, 1.0]])
def test_safe_format_keeps_label_dtype(colour_images, tiny_params, tmp_path, labels):
    X, y = colour_images
    y = np.where(y == "red", labels[0], labels[1])
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    loaded = PretrainedCNNClassifier.load(clf.save(tmp_path / "m"))
    assert loaded.predict(X).dtype == clf.predict(X).dtype
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))


def test_safe_format_keeps_the_history(fitted, tmp_path):
    clf, _ = fitted
    clf.history_.record("lr_logged", np.float32(0.5))  # a numpy scalar
    loaded = PretrainedCNNClassifier.load(clf.save(tmp_path / "m"))
    assert loaded.history_.to_list() == json.loads(
        json.dumps(clf.history_.to_list(), default=float)
    )
    assert loaded.history_[-1, "lr_logged"] == 0.5
    clf.history_.record("note", object())
    with pytest.raises(TypeError, match="no JSON form"):
        clf.save(tmp_path / "other")


def test_each_tensor_stored_once(fitted, tmp_path):
    clf, _ = fitted
    stored = load_file(clf.save(tmp_path / "m") / "model.safetensors")
    assert sorted(stored) == sorted(clf.model_.state_dict())
    n_bytes = sum(t.numel() * t.element_size() for t in stored.values())
    size = (tmp_path / "m" / "model.safetensors").stat().st_size
    assert size < n_bytes + 20_000  # header only on top of one copy


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit", [
    lambda m: m["classes"]["values"].reverse(),
    lambda m: m["params"].update(lr=0.5),
    lambda m: m["files"]["model.safetensors"].update(sha256="0" * 64),
])
def test_tampered_manifest_is_refused(fitted, tmp_path, edit):
    clf, _ = fitted
    out = clf.save(tmp_path / "m")
    _edit_manifest(out, edit)
    with pytest.raises(ModelFileError, match="changed|replaced"):
        PretrainedCNNClassifier.load(out)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("fix_hash", [False, True])
def test_planted_pickle_is_refused_and_never_run(fitted, tmp_path, fix_hash):
    clf, _ = fitted
    out = clf.save(tmp_path / "m")
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload works...
    assert marker.exists()
    marker.unlink()
    weights = out / "model.safetensors"
    torch.save({"x": _Payload(marker)}, weights)  # ...and is planted
    if fix_hash:  # an attacker also updates the file checksum
        _edit_manifest(out, lambda m: m["files"]["model.safetensors"].update(
            sha256=file_sha256(weights)))
    with pytest.raises(ModelFileError, match="Refusing to load"):
        PretrainedCNNClassifier.load(out)
    assert not marker.exists()


def test_missing_files(fitted, tmp_path):
    clf, _ = fitted
    with pytest.raises(ModelFileError, match="manifest.json' does not exist"):
        PretrainedCNNClassifier.load(tmp_path)
    out = clf.save(tmp_path / "m")
    (out / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="model.safetensors' does not exist"):
        PretrainedCNNClassifier.load(out)


def test_without_backbone_from_weights_file(colour_images, tiny_params, tmp_path,
                                            weights_file):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**{**tiny_params, "backbone": "tiny_file",
                                     "weights": str(weights_file)}).fit(X, y)
    full = clf.save(tmp_path / "full")
    slim = clf.save(tmp_path / "slim", include_backbone=False)
    stored = load_file(slim / "model.safetensors")
    assert stored and not any(k.startswith("frozen.") for k in stored)
    assert ((slim / "model.safetensors").stat().st_size
            < (full / "model.safetensors").stat().st_size / 2)
    loaded = PretrainedCNNClassifier.load(slim)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    # Different weights at the same path: the checksum catches it.
    torch.manual_seed(7)
    torch.save(nn.Sequential(*_build_tiny(None).blocks).state_dict(), weights_file)
    with pytest.raises(ModelFileError, match="does not match the one this model"):
        PretrainedCNNClassifier.load(slim)


def test_without_backbone_random_seeded(fitted, tmp_path, tiny_params, colour_images):
    clf, X = fitted
    loaded = PretrainedCNNClassifier.load(clf.save(tmp_path / "m",
                                                   include_backbone=False))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    unseeded = PretrainedCNNClassifier(**{**tiny_params, "random_state": None})
    unseeded.fit(*colour_images)
    with pytest.raises(ValueError, match="include_backbone=True"):
        unseeded.save(tmp_path / "u", include_backbone=False)


def test_unfitted_save_raises(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        PretrainedCNNClassifier().save(tmp_path / "m")


def test_every_torch_load_is_weights_only():
    package = Path(sktransfer.__file__).parent
    calls = []
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load"
                    and getattr(node.func.value, "id", None) == "torch"):
                flags = {kw.arg: kw.value for kw in node.keywords}
                ok = (isinstance(flags.get("weights_only"), ast.Constant)
                      and flags["weights_only"].value is True)
                calls.append((source.name, node.lineno, ok))
    assert calls, "expected at least the state-dict loader"
    assert all(ok for *_, ok in calls), calls


# -- atomic save -----------------------------------------------------------------

_KILLING_SAVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import conftest  # registers tiny_cnn
import joblib
from sktransfer.io import _safe_format

step, mode, model, path = sys.argv[1:]
if mode == "fallback":
    _safe_format._RENAMEAT2 = None  # as on a system without renameat2

def step_reached(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

_safe_format._step = step_reached
joblib.load(model).save(path)
"""

_STEPS = [("exchange", "written"), ("exchange", "swapped"), ("exchange", "cleaned"),
          ("fallback", "written"), ("fallback", "aside"), ("fallback", "renamed"),
          ("fallback", "cleaned"), ("exchange", "none")]


@pytest.mark.parametrize("mode, step", _STEPS, ids=[f"{m}-{s}" for m, s in _STEPS])
def test_save_killed_at_any_step_leaves_old_or_new_model(
    fitted, colour_images, tiny_params, tmp_path, mode, step
):
    import signal
    import subprocess
    import sys

    old, X = fitted
    new = PretrainedCNNClassifier(**dict(tiny_params, lr=0.2)).fit(*colour_images)
    target = tmp_path / "model"
    old.save(target)
    joblib.dump(new, tmp_path / "new.joblib")
    script = _KILLING_SAVER.format(tests=str(Path(__file__).parents[1]))
    result = subprocess.run(
        [sys.executable, "-c", script, step, mode, str(tmp_path / "new.joblib"),
         str(target)],
        capture_output=True, text=True, timeout=120,
    )
    if step == "none":
        assert result.returncode == 0, result.stderr
    else:  # the step was reached: the process really died there
        assert result.returncode == -signal.SIGKILL, result.stderr
    loaded = PretrainedCNNClassifier.load(target).predict_proba(X)
    matches = [np.allclose(loaded, est.predict_proba(X)) for est in (old, new)]
    assert any(matches)
    expect_new = step not in ("written", "aside")
    assert matches[1] == expect_new


def test_save_replaces_a_model_and_leaves_no_temporary_folder(fitted, tmp_path):
    clf, X = fitted
    clf.save(tmp_path / "m")
    clf.save(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "manifest.json", "model.safetensors"]


def test_save_refuses_to_replace_a_folder_that_is_no_model(fitted, tmp_path):
    clf, _ = fitted
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files but no saved model"):
        clf.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- malformed manifests -----------------------------------------------------------


def _rewrite_consistently(folder, edit):
    """Edit the manifest and recompute both checksums, as a careful editor would."""
    from safetensors.torch import save_file

    from sktransfer.io._safe_format import _canonical_sha256

    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    weights = folder / "model.safetensors"
    try:
        checksum = _canonical_sha256(manifest)
    except (TypeError, AttributeError):
        checksum = "0" * 64
    save_file(load_file(weights), str(weights), metadata={"manifest_sha256": checksum})
    if isinstance(manifest.get("files"), dict) and isinstance(
            manifest["files"].get("model.safetensors"), dict):
        manifest["files"]["model.safetensors"]["sha256"] = file_sha256(weights)
    path.write_text(json.dumps(manifest))


def _set(*keys, value):
    def edit(m):
        for key in keys[:-1]:
            m = m[key]
        m[keys[-1]] = value
    return edit


def _delete(key):
    return lambda m: m.pop(key)


_MALFORMED = {
    "no-params": (_delete("params"), "'params' is missing"),
    "no-backbone": (_delete("backbone"), "'backbone' is missing"),
    "no-fitted": (_delete("fitted"), "'fitted' is missing"),
    "no-estimator": (_delete("estimator"), "'estimator' is missing"),
    "params-list": (_set("params", value=[]), "'params' is a JSON list"),
    "backbone-str": (_set("backbone", value="tiny_cnn"), "'backbone' is a JSON str"),
    "included-str": (_set("backbone", "included", value="yes"), "backbone.included"),
    "other-backbone": (_set("backbone", "name", value="resnet50"),
                       "does not match the backbone parameter"),
    "version-str": (_set("format_version", value="1"), "'format_version'"),
    "version-bool": (_set("format_version", value=True), "'format_version'"),
    "files-empty": (_set("files", value={}), "files.model.safetensors"),
    "classes-int": (_set("classes", value={"dtype": "<U5", "values": 3}), "classes"),
    "tuple-not-list": (_set("tuple_params", value=["lr"]), "tuple_params"),
    "history-str": (_set("history", value="x"), "'history'"),
    "skipped-bad": (_set("skipped_images", value=[[1]]), "skipped_images"),
    "versions-int": (_set("library_versions", value={"torch": 2}), "library_versions"),
    "unknown-param": (_set("params", "bogus", value=1), "cannot be rebuilt"),
    "bad-preprocessing": (_set("preprocessing", value={"foo": 1}), "cannot be rebuilt"),
    "bad-dtype": (_set("classes", "dtype", value="no-such-dtype"), "cannot be rebuilt"),
    "unknown-backbone": (lambda m: (_set("params", "backbone", value="nope")(m),
                                    _set("backbone", "name", value="nope")(m)),
                         "cannot be rebuilt"),
}


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_malformed_manifest_is_a_model_file_error(fitted, tmp_path, case):
    edit, message = _MALFORMED[case]
    clf, _ = fitted
    out = clf.save(tmp_path / "m")
    _rewrite_consistently(out, edit)
    with pytest.raises(ModelFileError, match=message.replace(".", r"\.")):
        PretrainedCNNClassifier.load(out)


def test_deeply_nested_manifest_is_a_model_file_error(fitted, tmp_path):
    clf, _ = fitted
    out = clf.save(tmp_path / "m")
    (out / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelFileError, match="nests JSON values too deeply"):
        PretrainedCNNClassifier.load(out)
