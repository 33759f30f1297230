"""Resolve the ``weights`` parameter to loaded tensors, offline where possible.

``weights`` is one of: ``"DEFAULT"`` (the recommended pretrained weights),
the name of a torchvision weights enum member such as ``"IMAGENET1K_V2"``,
``None`` (random initialisation) or a path to a local state-dict file.
"""

import functools
import hashlib
import os
from pathlib import Path

import torch

__all__ = [
    "file_sha256",
    "hub_checkpoint",
    "is_weights_path",
    "load_backbone_state",
    "load_state_dict_file",
    "weights_file_digest",
    "weights_file_id",
]


def is_weights_path(weights):
    """Whether ``weights`` names a file rather than a weights enum member."""
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (
        os.sep in weights or weights.endswith((".pth", ".pt", ".safetensors"))
    )


def file_sha256(path, chunk_size=1 << 20):
    """Hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_file_digest(path):
    """SHA-256 of a weights file, hashed again only when the file changes.

    Every fit of a search or a CV fold names the weights it was built from,
    and hashing a 100 MB file each time would cost more than training a head.
    The file's size and modification time decide whether the hash is reused;
    integrity checks of saved models use :func:`file_sha256` directly.
    """
    stat = os.stat(path)
    return _digest_of(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest_of(path, size, mtime_ns):
    return file_sha256(path)


def weights_file_id(path):
    """Identity of a local weights file, as fitted models record it."""
    return f"file:sha256:{weights_file_digest(path)}"


def load_state_dict_file(path):
    """Load a state dict from ``path`` without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; anything else goes
    through ``torch.load(..., weights_only=True)``, which refuses pickled
    code. Checkpoints that wrap the state dict under ``"state_dict"`` or
    ``"model"`` are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {str(path)!r} does not exist. Pass weights='DEFAULT', "
            "None, or the path of an existing state-dict file."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise ValueError(
            f"Could not load weights file {str(path)!r} as a plain state dict "
            f"({type(exc).__name__}: {exc}). Only tensors are accepted; save "
            "weights with torch.save(model.state_dict(), path)."
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(
            f"Weights file {str(path)!r} holds a {type(state).__name__}, not a "
            "state dict (a mapping of parameter names to tensors)."
        )
    return state


def load_backbone_state(model, path, classifier_prefixes):
    """Load the state dict in ``path`` into ``model``, ignoring any classifier.

    Users often fine-tune a model on their own classes and save it whole; the
    backbone weights are what matters here, since the estimator replaces the
    classifier with its own head. Keys under ``classifier_prefixes`` are
    therefore dropped from the file, and those the model has keep their
    current values. Every other key must match in name and shape.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture, built with random weights.
    path : str or path-like
        A ``.pth``/``.pt``/``.safetensors`` state-dict file.
    classifier_prefixes : tuple of str
        Module names of the classifier, e.g. ``("fc",)`` or ``("head.fc",)``.

    Raises
    ------
    ValueError
        When the file does not fit the architecture, naming some keys.
    """
    def is_classifier(key):
        return any(key.startswith(f"{p}.") for p in classifier_prefixes)

    state = {
        k: v for k, v in load_state_dict_file(path).items() if not is_classifier(k)
    }
    own = model.state_dict()
    missing = [k for k in own if k not in state and not is_classifier(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"Weights file {str(path)!r} does not match the architecture: "
            f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}, "
            f"shape mismatches {mismatched[:5]}. Check that the file was saved "
            "from the same backbone."
        )
    model.load_state_dict({**{k: v for k, v in own.items() if is_classifier(k)},
                           **state})
    return model


def hub_checkpoint(url):
    """Where torch.hub keeps the file downloaded from ``url``, present or not."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_torchvision_weights(model, weights_enum, model_name):
    """Load a torchvision weights enum member into ``model``, from the cache.

    torchvision downloads weights into ``$TORCH_HOME/hub/checkpoints`` the
    first time; later calls, and machines where the file was copied there,
    need no network.
    """
    checkpoint = hub_checkpoint(weights_enum.url)
    checkpoint_dir, filename = checkpoint.parent, checkpoint.name
    try:
        # torch.hub unpickles with weights_only=False by default, which would
        # run code planted in a cached file.
        state = weights_enum.get_state_dict(
            progress=False, check_hash=True, weights_only=True
        )
    except Exception as exc:  # URLError, HTTPError, UnpicklingError, ...
        raise RuntimeError(
            f"Could not download or load the weights {weights_enum} for "
            f"{model_name!r} "
            f"({type(exc).__name__}: {exc}). To work offline, put the file "
            f"{filename!r} (from {weights_enum.url}) into {str(checkpoint_dir)!r} "
            "(set TORCH_HOME to choose another cache), or pass "
            "weights='/path/to/state_dict.pth'."
        ) from exc
    model.load_state_dict(state)
    return model
