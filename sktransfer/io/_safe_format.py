"""Save and load fitted classifiers without pickle: safetensors plus JSON.

A saved model is a directory holding ``model.safetensors`` (tensors only)
and ``manifest.json`` (parameters, classes, preprocessing, versions and
checksums). Loading parses JSON and safetensors, never unpickles, so a file
from an untrusted source cannot run code; checksums catch files that were
edited or swapped after saving.

With ``include_backbone=False`` only the trained suffix is stored, with a
reference to the frozen backbone (its name, weights identity and a SHA-256
of its tensors); loading rebuilds the backbone from its weights and checks
the tensors match.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from skorch.history import History

from .._runtime import seeded
from .._transforms import Preprocessing
from ..backbones._weights import file_sha256
from ._pickle import library_versions, warn_on_version_change

__all__ = ["ModelFileError", "load_model", "save_model", "tensors_sha256"]

FORMAT = "sktransfer-safe"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"

# Fitted values with a JSON form of their own, each in a manifest entry of
# its own; every other fitted value is a plain JSON value under "fitted".
# Which attributes exist is the estimator's business (``_fitted_values``).
_ENCODED = {
    "classes_": "classes",
    "skipped_images_": "skipped_images",
    "history_": "history",
    "preprocessing_": "preprocessing",
}


class ModelFileError(ValueError):
    """A saved model directory that is incomplete, edited or not trusted."""


def tensors_sha256(state_dict):
    """SHA-256 of a state dict's names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Raw bytes via uint8 work for every dtype, bf16 included.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _json_value(value):
    """``value`` as JSON, or raise TypeError when it has no JSON form."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int, float, list)):
        json.dumps(value)  # lists of odd objects raise here
        return value
    raise TypeError(type(value).__name__)


def _params_for_json(est):
    """JSON-able parameters, and the names of those that are not."""
    params, dropped = {}, []
    for name, value in est.get_params(deep=False).items():
        try:
            params[name] = _json_value(value)
        except TypeError:
            dropped.append(name)
    return params, dropped


def _history_for_json(history):
    """skorch's history (epochs, with their batches) as plain JSON values."""
    if history is None:
        return None

    def plain(value):  # numpy and 0-d torch scalars that skorch may log
        if isinstance(value, (np.generic, torch.Tensor)):
            return value.item()
        raise TypeError(
            f"The training history holds a {type(value).__name__}, which has "
            "no JSON form; log plain numbers from callbacks, or pickle the "
            "model with joblib instead."
        )

    return json.loads(json.dumps(history.to_list(), default=plain))


def _classes_for_json(classes):
    values = classes.tolist()
    for v in values:
        if not isinstance(v, (str, int, float, bool)):
            raise TypeError(
                f"Class label {v!r} of type {type(v).__name__} cannot be saved "
                "in the safe format; use str, int, float or bool labels, or "
                "pickle the model with joblib instead."
            )
    return {"dtype": classes.dtype.str, "values": values}


def _canonical_sha256(manifest):
    """Checksum of everything in the manifest except the file checksums."""
    core = {k: v for k, v in manifest.items() if k != "files"}
    text = json.dumps(core, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _encode(name, value):
    if name == "classes_":
        return _classes_for_json(value)
    if name == "skipped_images_":
        return [list(pair) for pair in value]
    if name == "history_":
        return _history_for_json(value)
    if name == "preprocessing_":
        return _json_value(value.to_dict())
    return _json_value(value)


def _decode(name, value):
    if name == "classes_":
        return np.array(value["values"], dtype=np.dtype(value["dtype"]))
    if name == "skipped_images_":
        return [tuple(pair) for pair in value]
    if name == "history_":
        return None if value is None else History(value)
    if name == "preprocessing_":
        return Preprocessing(**_restore_tuples(value))
    return value


def save_model(est, path, *, include_backbone=True):
    """Write a fitted classifier to directory ``path`` (see module doc)."""
    from safetensors.torch import save_file

    check_is_fitted(est)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"Cannot save to {str(path)!r}: it is a file. The safe format is a "
            "directory; pass a new or existing directory path."
        )
    if not include_backbone and est.weights_id_ == "random" and est.torch_seed_ is None:
        raise ValueError(
            "include_backbone=False needs a backbone that can be rebuilt: this "
            "one has random weights (weights=None) and no int random_state. "
            "Save with include_backbone=True."
        )
    values, modules = est._fitted_state()
    # Private state (e.g. the optimizer's, for warm_start) stays in pickles.
    values = {k: v for k, v in values.items() if not k.startswith("_")}
    state = modules["model_"]
    frozen = {k.removeprefix("frozen."): v for k, v in state.items()
              if k.startswith("frozen.")}
    if include_backbone:
        tensors = state
    else:
        tensors = {k: v for k, v in state.items() if not k.startswith("frozen.")}
    params, dropped = _params_for_json(est)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "estimator": type(est).__name__,
        "params": params,
        "params_not_saved": dropped,
        # JSON has no tuples; these come back as tuples so get_params() agrees.
        "tuple_params": sorted(n for n, v in est.get_params(deep=False).items()
                               if isinstance(v, tuple) and n in params),
        "fitted": {name: _encode(name, value) for name, value in values.items()
                   if name not in _ENCODED},
        **{entry: _encode(name, values.get(name)) for name, entry in _ENCODED.items()
           if name in values},
        "backbone": {
            "name": est.backbone,
            "weights_id": est.weights_id_,
            "included": include_backbone,
            "frozen_sha256": tensors_sha256(frozen),
        },
        "library_versions": library_versions(),
    }
    path.mkdir(parents=True, exist_ok=True)
    weights_path = path / WEIGHTS_FILE
    cpu = {k: v.contiguous() for k, v in tensors.items()}
    # The weights file carries the manifest's checksum and the manifest the
    # weights file's, so neither can be edited or swapped alone.
    save_file(cpu, str(weights_path),
              metadata={"manifest_sha256": _canonical_sha256(manifest)})
    manifest["files"] = {WEIGHTS_FILE: {"sha256": file_sha256(weights_path)}}
    (path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _read_manifest(path):
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ModelFileError(
            f"{str(manifest_path)!r} does not exist. Pass the directory written "
            "by save(); models pickled with joblib load with joblib.load."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{str(manifest_path)!r} is not valid JSON: {exc}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(
            f"{str(manifest_path)!r} is not an sktransfer model manifest (no "
            f"format={FORMAT!r})."
        )
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{str(manifest_path)!r} has format version "
            f"{manifest['format_version']}, newer than this sktransfer reads "
            f"({FORMAT_VERSION}); upgrade sktransfer."
        )
    return manifest


def _read_tensors(path, manifest):
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelFileError(f"{str(weights_path)!r} does not exist.")
    expected = manifest.get("files", {}).get(WEIGHTS_FILE, {}).get("sha256")
    actual = file_sha256(weights_path)
    if expected != actual:
        raise ModelFileError(
            f"{str(weights_path)!r} has SHA-256 {actual}, but the manifest "
            f"expects {expected}: the file was changed or replaced after saving. "
            "Refusing to load it; save the model again from a trusted copy."
        )
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(
            f"{str(weights_path)!r} is not a valid safetensors file ({exc}). "
            "Refusing to load it."
        ) from None
    if metadata.get("manifest_sha256") != _canonical_sha256(manifest):
        raise ModelFileError(
            f"{str(path / MANIFEST_FILE)!r} was changed after saving (its "
            f"checksum no longer matches the one recorded in {WEIGHTS_FILE}). "
            "Refusing to load it; save the model again from a trusted copy."
        )
    return tensors


def load_model(cls, path):
    """Rebuild a classifier saved by :func:`save_model`; unpickles nothing."""
    path = Path(path)
    manifest = _read_manifest(path)
    if manifest["estimator"] != cls.__name__:
        raise ModelFileError(
            f"{str(path)!r} holds a {manifest['estimator']}, not a {cls.__name__}."
        )
    tensors = _read_tensors(path, manifest)
    warn_on_version_change(manifest["library_versions"], f"The model in {str(path)!r}")
    params = dict(manifest["params"])
    for name in manifest.get("tuple_params", []):
        params[name] = tuple(params[name])
    est = cls(**params)
    values = dict(manifest["fitted"])
    values.update({name: _decode(name, manifest[entry])
                   for name, entry in _ENCODED.items() if entry in manifest})
    backbone = manifest["backbone"]
    if backbone["included"]:
        est._restore_fitted_state(values, {"model_": tensors})
        return est
    # Built as fit built it: a random backbone needs the same seed.
    with seeded(values.get("torch_seed_"), "cpu"):
        _, parts = est._backbone_parts(est.weights)
    rebuilt_id = parts.weights_id
    incompatible = est._restore_fitted_state(values, {"model_": tensors}, parts=parts)
    missing, unexpected = incompatible["model_"]
    frozen = est.model_.frozen.state_dict()
    if (rebuilt_id != backbone["weights_id"] or unexpected
            or any(not k.startswith("frozen.") for k in missing)
            or tensors_sha256(frozen) != backbone["frozen_sha256"]):
        raise ModelFileError(
            f"The backbone rebuilt from weights={est.weights!r} does not "
            f"match the one this model was trained on ({backbone['name']!r}, "
            f"weights {backbone['weights_id']}): the weights changed. Provide "
            "the original weights, or save the model with "
            "include_backbone=True."
        )
    return est


def _restore_tuples(prep):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in prep.items()}
