"""Feature cache: frozen-backbone outputs keyed by image file and frozen prefix.

An entry's key combines the image file's identity and change stamps
(:func:`image_fingerprint`) with a digest of the fitted frozen prefix itself
(:func:`module_structure_digest`: every layer and tensor shape) and of its
weights' identity, its preprocessing, its precision and the library version.
A changed image, or a prefix with other weights or another architecture,
therefore never reuses an entry, while two estimators whose frozen parts are
identical share them.

Disk entries carry a header naming their key, shape, dtype and a checksum of
their bytes; anything that does not check out (truncated, corrupt, written by
something else, wrongly shaped or typed) is a miss, and the entry is
rewritten.
"""

import contextlib
import errno
import hashlib
import json
import os
import struct
import tempfile
import threading
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ._version import __version__
from ._warnings import user_stacklevel

__all__ = [
    "DiskFeatureStore",
    "MemoryFeatureStore",
    "clear_feature_cache",
    "image_fingerprint",
    "model_cache_key",
    "module_structure_digest",
]


def image_fingerprint(path):
    """Identity and change stamps of an image file, or None if it can't be read.

    ``realpath|device|inode|size|mtime_ns|ctime_ns``. Size and mtime alone
    miss a same-size rewrite whose mtime was restored (``os.utime``, tar or
    rsync extraction) or fell within the file system's mtime resolution; the
    ctime changes on every write and cannot be set by ``os.utime``, and a
    file replaced by a new one (``os.replace``) has a new inode. One
    ``stat`` call, no read of the file's content.
    """
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
    return (f"{real}|{st.st_dev}|{st.st_ino}|{st.st_size}|"
            f"{st.st_mtime_ns}|{st.st_ctime_ns}")


def model_cache_key(**settings):
    """Stable hash of the settings that determine the frozen features."""
    settings = dict(settings, sktransfer_version=__version__)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


# module -> digest, so the repr of a large prefix is built once per fit.
_DIGESTS = weakref.WeakKeyDictionary()


def module_structure_digest(module):
    """SHA-256 of a module's architecture: its ``repr`` and tensor layout.

    The ``repr`` names every layer class with its settings; the name, dtype
    and shape of every parameter and buffer complete it. A backbone
    registered again under the same name with another architecture gets
    another digest. Weight values are not hashed (see
    :func:`sktransfer._frozen.frozen_cache_key` for why and what stands in).
    """
    cached = _DIGESTS.get(module)
    if cached is not None:
        return cached
    digest = hashlib.sha256(repr(module).encode())
    for name, tensor in module.state_dict().items():
        digest.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
    _DIGESTS[module] = value = digest.hexdigest()
    return value


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


# Disk entry: MAGIC, a 4-byte little-endian header length, a JSON header
# (key, fingerprint, dtype, shape, sha256 of the data), then the rows' bits,
# little-endian.
_MAGIC = b"SKTFEAT1"
_MAX_HEADER = 64 * 1024


def current_umask():
    """The process's umask, read without changing it where the OS allows."""
    try:  # Linux 4.7+: no window in which another thread sees umask 0
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFeatureStore:
    """One file per entry under ``directory``, written atomically.

    Several processes (joblib workers, Dask workers on a shared file system)
    can read and write the same directory: a file appears under its final
    name only once it is complete, with the permissions the umask allows
    (as ``open`` would give), not ``mkstemp``'s 0600.

    Entries keep the tensor's dtype (float32, or bf16/fp16 for features of
    a prefix run in half precision). Every entry is checked when read: the
    header must name this entry's key and image fingerprint and a dtype the
    store keeps, the shape must be ``expected_shape`` when the caller knows
    it, and the data must match the header's SHA-256. Anything else is a
    miss, rewritten by the next
    :meth:`put`. Entries are not fsynced: after a crash, a torn entry fails
    its checksum and is recomputed.

    A directory that cannot be written (read-only, full disk, owned by
    another user) warns once; the store then stops writing and the caller
    carries on with the other stores.
    """

    def __init__(self, directory):
        self.directory = Path(directory) / "sktransfer-features"
        self.disabled = False
        self.file_mode = 0o666 & ~current_umask()

    def _path(self, model_key, fingerprint):
        key = _entry_key(model_key, fingerprint)
        return self.directory / key[:2] / f"{key}.feat"

    def get(self, model_key, fingerprint, expected_shape=None):
        if self.disabled:
            return None
        path = self._path(model_key, fingerprint)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except (OSError, ValueError):
            return None
        return _decode_entry(blob, model_key, fingerprint, expected_shape)

    def put(self, model_key, fingerprint, tensor):
        if self.disabled:
            return
        path = self._path(model_key, fingerprint)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), self.file_mode)
                f.write(_encode_entry(model_key, fingerprint, tensor))
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._give_up(exc)

    def _give_up(self, exc):
        self.disabled = True
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "the disk is full"
        warnings.warn(
            f"Cannot write the feature cache in {str(self.directory)!r} "
            f"({reason}); continuing without the disk cache for this call. "
            "Pass a writable directory as cache=..., or cache='auto' to keep "
            "features in memory only.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


# Stored dtypes by header name, with the little-endian integer layout of
# their bits: numpy has no bf16, and the bits round-trip every value exactly.
_DTYPES = {
    "float32": (torch.float32, torch.int32, "<i4"),
    "bfloat16": (torch.bfloat16, torch.int16, "<i2"),
    "float16": (torch.float16, torch.int16, "<i2"),
}
_DTYPE_NAMES = {dtype: name for name, (dtype, _, _) in _DTYPES.items()}


def _encode_entry(model_key, fingerprint, tensor):
    tensor = tensor.detach().cpu().contiguous()
    name = _DTYPE_NAMES.get(tensor.dtype)
    if name is None:  # a dtype the store does not keep: as it always was
        tensor, name = tensor.float(), "float32"
    _, bits, layout = _DTYPES[name]
    raw = np.ascontiguousarray(tensor.view(bits).numpy(), dtype=layout).tobytes()
    header = json.dumps({
        "model_key": model_key,
        "fingerprint": fingerprint,
        "dtype": name,
        "shape": list(tensor.shape),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }).encode()
    return _MAGIC + struct.pack("<I", len(header)) + header + raw


def _decode_entry(blob, model_key, fingerprint, expected_shape):
    """The entry's tensor, or None unless every check passes."""
    start = len(_MAGIC) + 4
    if len(blob) < start or not blob.startswith(_MAGIC):
        return None
    (n_header,) = struct.unpack("<I", blob[len(_MAGIC):start])
    if n_header > _MAX_HEADER or len(blob) < start + n_header:
        return None
    try:
        header = json.loads(blob[start:start + n_header])
        shape = tuple(int(n) for n in header["shape"])
        dtype, bits, layout = _DTYPES[header["dtype"]]
        ok = (header["model_key"] == model_key
              and header["fingerprint"] == fingerprint)
        checksum = header["sha256"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    raw = blob[start + n_header:]
    itemsize = np.dtype(layout).itemsize
    if (not ok or any(n < 0 for n in shape)
            or len(raw) != itemsize * int(np.prod(shape))
            or (expected_shape is not None and shape != tuple(expected_shape))
            or hashlib.sha256(raw).hexdigest() != checksum):
        return None
    array = np.frombuffer(raw, dtype=layout).reshape(shape)
    # astype copies into native byte order, and out of the read-only blob.
    native = array.astype(np.dtype(layout).newbyteorder("="))
    return torch.from_numpy(native).view(dtype)


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
    if cache is True or (isinstance(cache, str) and cache == "auto"):
        return [_MEMORY_STORE]
    location = getattr(cache, "location", cache)  # joblib.Memory or a path
    if location is None:  # joblib.Memory(None) disables caching
        return [_MEMORY_STORE]
    return [_MEMORY_STORE, DiskFeatureStore(location)]
