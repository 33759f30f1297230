"""Feature cache: frozen-backbone outputs keyed by image file and model setting.

An entry's key combines the image's resolved path, size and modification
time with everything that determines the frozen output: backbone, weights
identity, cut point, preprocessing, precision and library version. A changed
image or setting therefore never reuses a stale entry.
"""

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ._version import __version__

__all__ = [
    "DiskFeatureStore",
    "MemoryFeatureStore",
    "clear_feature_cache",
    "image_fingerprint",
    "model_cache_key",
]


def image_fingerprint(path):
    """``realpath|size|mtime_ns`` of an image file, or None if it can't be read."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return f"{real}|{st.st_size}|{st.st_mtime_ns}"


def model_cache_key(**settings):
    """Stable hash of the settings that determine the frozen features."""
    settings = dict(settings, sktransfer_version=__version__)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _entry_key(model_key, fingerprint):
    return hashlib.sha256(f"{model_key}\n{fingerprint}".encode()).hexdigest()


class MemoryFeatureStore:
    """Process-wide least-recently-used store, bounded in bytes.

    It lets cross-validation folds and grid-search candidates that run in
    the same process share features without touching the disk.
    """

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._entries = OrderedDict()
        self._n_bytes = 0
        self._lock = threading.Lock()

    def get(self, model_key, fingerprint):
        key = _entry_key(model_key, fingerprint)
        with self._lock:
            tensor = self._entries.get(key)
            if tensor is not None:
                self._entries.move_to_end(key)
            return tensor

    def put(self, model_key, fingerprint, tensor):
        size = tensor.element_size() * tensor.nelement()
        if size > self.max_bytes:
            return
        if tensor.untyped_storage().nbytes() != size:
            # A row of a batch: keeping the view would keep the whole batch
            # alive and make the byte count wrong.
            tensor = tensor.clone()
        key = _entry_key(model_key, fingerprint)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._n_bytes -= old.element_size() * old.nelement()
            self._entries[key] = tensor
            self._n_bytes += size
            while self._n_bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._n_bytes -= evicted.element_size() * evicted.nelement()

    def clear(self):
        with self._lock:
            self._entries.clear()
            self._n_bytes = 0

    def __len__(self):
        return len(self._entries)


class DiskFeatureStore:
    """One ``.npy`` file per entry under ``directory``, written atomically.

    Several processes (joblib workers, Dask workers on a shared file system)
    can read and write the same directory: a file appears under its final
    name only once it is complete.
    """

    def __init__(self, directory):
        self.directory = Path(directory) / "sktransfer-features"

    def _path(self, model_key, fingerprint):
        key = _entry_key(model_key, fingerprint)
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, model_key, fingerprint):
        path = self._path(model_key, fingerprint)
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False))
        except (OSError, ValueError):
            return None

    def put(self, model_key, fingerprint, tensor):
        path = self._path(model_key, fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, tensor.numpy(), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_MEMORY_STORE = MemoryFeatureStore(max_bytes=2 * 1024**3)


def memory_store():
    """The process-wide in-memory store."""
    return _MEMORY_STORE


def clear_feature_cache():
    """Empty the in-memory feature cache of this process.

    On-disk caches (``cache="/some/dir"``) are plain directories; delete them
    to clear them.

    Examples
    --------
    >>> from sktransfer import clear_feature_cache
    >>> clear_feature_cache()
    """
    _MEMORY_STORE.clear()


def stores_for(cache):
    """The stores that ``cache`` (the estimator parameter) asks for."""
    if cache is False:
        return []
    if cache == "auto":
        return [_MEMORY_STORE]
    location = getattr(cache, "location", cache)  # joblib.Memory or a path
    if location is None:  # joblib.Memory(None) disables caching
        return [_MEMORY_STORE]
    return [_MEMORY_STORE, DiskFeatureStore(location)]
