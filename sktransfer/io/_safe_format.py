"""Save and load fitted estimators without pickle: safetensors plus JSON.

A saved model is a directory holding ``model.safetensors`` (tensors only)
and ``manifest.json`` (parameters, classes, preprocessing, versions and
checksums). Loading parses JSON and safetensors, never unpickles, so a file
from an untrusted source cannot run code.

The checksums (the weights file's SHA-256 in the manifest, the manifest's in
the weights file) catch accidental damage and mismatched files: a truncated
copy, a flipped bit, a weights file from another save, a manifest edited by
hand. They are not a signature: anyone who edits the files and recomputes
both checksums gets a model that loads. Trust a model directory as much as
its source. The manifest's structure is checked before anything is built
from it, so a malformed one is a :class:`ModelFileError` naming the problem.

Saving is atomic: the new model is written and fsynced in a temporary
sibling directory, then swapped into place (one ``renameat2`` exchange on
Linux; elsewhere rename the old one aside, rename the new one in), and the
parent directory is fsynced. A process killed at any point leaves the old
model or the new one loadable at ``path``; in the fallback's one gap between
the two renames, :func:`load_model` reads the old model from its aside name.
What a killed save leaves beside ``path`` (``.<name>.saving-*`` and
``.<name>.old-*`` folders, exactly as this module names them) is removed by
the next successful save of ``path``, and never read while ``path`` holds a
model.

With ``include_backbone=False`` only the trained suffix is stored, with a
reference to the frozen backbone (its name, weights identity and a SHA-256
of its tensors); loading rebuilds the backbone from its weights and checks
the tensors match.
"""

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from skorch.history import History

from .._cache import current_umask
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
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.tolist()  # numeric fitted arrays; the estimator converts back
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
        return Preprocessing.from_dict(value)
    return value


def save_model(est, path, *, include_backbone=True):
    """Write a fitted estimator to directory ``path`` (see module doc)."""
    from safetensors.torch import save_file

    check_is_fitted(est)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"Cannot save to {str(path)!r}: it is a file. The safe format is a "
            "directory; pass a new or existing directory path."
        )
    if (path.is_dir() and not (path / MANIFEST_FILE).is_file()
            and any(path.iterdir())):
        raise ValueError(
            f"Cannot save to {str(path)!r}: it is a directory that holds other "
            "files but no saved model, and saving replaces the whole "
            "directory. Pass a new path, an empty directory or a model saved "
            "before."
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
    cpu = {k: v.contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.saving-"))
    try:
        # mkdtemp's 0700 is not the user's choice; the umask is.
        os.chmod(tmp, 0o777 & ~current_umask())
        weights_path = tmp / WEIGHTS_FILE
        # The weights file carries the manifest's checksum and the manifest
        # the weights file's, so a file from another save is refused.
        save_file(cpu, str(weights_path),
                  metadata={"manifest_sha256": _canonical_sha256(manifest)})
        _fsync_path(weights_path)
        manifest["files"] = {WEIGHTS_FILE: {"sha256": file_sha256(weights_path)}}
        _write_synced(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        _fsync_path(tmp)
        _step("written")
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_leftovers(path)
    return path


def _step(name):
    """Called between the steps of a save; tests kill the process here."""


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _exchange_function():
    """libc's ``renameat2``, or None where there is none (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                         ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _exchange_function()
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a, b):
    """Swap two paths atomically; False where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                        _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False  # e.g. a file system without RENAME_EXCHANGE
    raise OSError(code, os.strerror(code), os.fspath(b))


def _aside_prefix(path):
    return f".{path.name}.old-"


def _leftover_kind(path, name):
    """``"saving"`` or ``"old"`` when ``name`` is one of our folders beside
    ``path`` (a save's temporary or aside copy), else None.

    Only the exact names this module makes match: ``mkdtemp``'s eight
    characters after ``saving-``, a uuid4's 32 hex digits after ``old-``.
    Another model's folders (``.m.saving-x.saving-...`` for a model named
    ``m.saving-x``) or the user's own never do.
    """
    match = re.fullmatch(
        rf"\.{re.escape(path.name)}\.(?:(saving)-[a-z0-9_]{{8}}|(old)-[0-9a-f]{{32}})",
        name,
    )
    if match is None:
        return None
    return match.group(1) or match.group(2)


def _remove_leftovers(path):
    """Remove what saves of ``path`` killed earlier left beside it.

    Called once ``path`` holds the model just saved, so no copy there is
    needed any more. A save of the same path running at this moment in
    another process would lose its temporary folder and fail: saves of one
    path must not run concurrently (nor could both win).
    """
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            if (_leftover_kind(path, entry.name) is not None
                    and entry.is_dir() and not entry.is_symlink()):
                shutil.rmtree(entry, ignore_errors=True)


def _swap_into_place(tmp, path):
    """Make the complete directory ``tmp`` the model at ``path``."""
    parent = path.parent
    if not path.exists():
        os.rename(tmp, path)
        _step("renamed")
        _fsync_path(parent)
        return
    if _exchange(tmp, path):
        _step("swapped")
        _fsync_path(parent)
        shutil.rmtree(tmp, ignore_errors=True)  # now the old model
        _step("cleaned")
        return
    old = parent / f"{_aside_prefix(path)}{uuid.uuid4().hex}"
    os.rename(path, old)
    _step("aside")
    os.rename(tmp, path)
    _step("renamed")
    _fsync_path(parent)
    shutil.rmtree(old, ignore_errors=True)
    _step("cleaned")


def _model_directory(path):
    """``path``, or the old model left aside by a save killed mid-swap."""
    if (path / MANIFEST_FILE).is_file() or not path.parent.is_dir():
        return path
    with contextlib.suppress(OSError):
        aside = [p for p in path.parent.iterdir()
                 if _leftover_kind(path, p.name) == "old"
                 and (p / MANIFEST_FILE).is_file()]
        if len(aside) == 1:
            return aside[0]
    return path


def _read_manifest(path):
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ModelFileError(
            f"{str(manifest_path)!r} does not exist. Pass the directory written "
            "by save(); models pickled with joblib load with joblib.load."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{str(manifest_path)!r} is not valid JSON: {exc}"
        ) from None
    except RecursionError:
        raise ModelFileError(
            f"{str(manifest_path)!r} nests JSON values too deeply to be a "
            "model manifest."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelFileError(
            f"{str(manifest_path)!r} is not an sktransfer model manifest (no "
            f"format={FORMAT!r})."
        )
    version = manifest.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise ModelFileError(
            f"{str(manifest_path)!r} has format version "
            f"{manifest['format_version']}, newer than this sktransfer reads "
            f"({FORMAT_VERSION}); upgrade sktransfer."
        )
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise ModelFileError(
            f"{str(manifest_path)!r} is not a well-formed model manifest: "
            f"{problem}. Save the model again."
        )
    return manifest


def _type_name(value):
    return "null" if value is None else type(value).__name__


# entry -> (type, required); a type of None means JSON null is allowed too.
_MANIFEST_ENTRIES = {
    "format": (str, True),
    "format_version": (int, True),
    "estimator": (str, True),
    "params": (dict, True),
    "params_not_saved": (list, True),
    "tuple_params": (list, True),
    "fitted": (dict, True),
    "backbone": (dict, True),
    "library_versions": (dict, True),
    "files": (dict, True),
    "classes": (dict, False),
    "skipped_images": (list, False),
    "history": ((list, type(None)), False),
    "preprocessing": (dict, False),
}
_BACKBONE_ENTRIES = {"name": str, "weights_id": str, "included": bool,
                     "frozen_sha256": str}


def _is(value, kind):
    if kind is int:  # JSON true/false are bools, which Python counts as ints
        return type(value) is int
    return isinstance(value, kind)


def _manifest_problem(m):
    """What is structurally wrong with manifest ``m``, or None."""
    for key, (kind, required) in _MANIFEST_ENTRIES.items():
        if key not in m:
            if required:
                return f"the entry {key!r} is missing"
            continue
        if not _is(m[key], kind):
            return f"{key!r} is a JSON {_type_name(m[key])}, not the expected type"
    backbone = m["backbone"]
    for key, kind in _BACKBONE_ENTRIES.items():
        if not _is(backbone.get(key), kind):
            return f"backbone.{key} is missing or of the wrong type"
    if m["params"].get("backbone") != backbone["name"]:
        return (f"backbone.name {backbone['name']!r} does not match the "
                f"backbone parameter {m['params'].get('backbone')!r}")
    entry = m["files"].get(WEIGHTS_FILE)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return f"files.{WEIGHTS_FILE}.sha256 is missing or not a string"
    for name in m["tuple_params"]:
        if not isinstance(name, str) or not isinstance(m["params"].get(name), list):
            return f"tuple_params names {name!r}, which is not a list parameter"
    if not all(isinstance(k, str) and isinstance(v, str)
               for k, v in m["library_versions"].items()):
        return "library_versions must map names to version strings"
    classes = m.get("classes")
    if classes is not None and not (isinstance(classes.get("dtype"), str)
                                    and isinstance(classes.get("values"), list)):
        return "classes needs a dtype string and a list of values"
    for pair in m.get("skipped_images", []):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(v, str) for v in pair)):
            return "skipped_images must be [path, reason] pairs of strings"
    if (m.get("history") is not None
            and not all(isinstance(epoch, dict) for epoch in m["history"])):
        return "history must be a list of epochs (JSON objects)"
    return None


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
    """Rebuild an estimator saved by :func:`save_model`; unpickles nothing.

    Raises
    ------
    ModelFileError
        For a missing, damaged, mismatched or malformed model directory,
        naming the problem.
    """
    path = _model_directory(Path(path))
    manifest = _read_manifest(path)
    if manifest["estimator"] != cls.__name__:
        raise ModelFileError(
            f"{str(path)!r} holds a {manifest['estimator']}, not a {cls.__name__}."
        )
    tensors = _read_tensors(path, manifest)
    try:
        return _build(cls, path, manifest, tensors)
    except ModelFileError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, RuntimeError,
            RecursionError) as exc:
        # Well-formed and with matching checksums, yet unusable: e.g. written
        # by hand, or by another version that stored other values.
        raise ModelFileError(
            f"{str(path)!r} cannot be rebuilt into a {cls.__name__}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _build(cls, path, manifest, tensors):
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

