"""Frozen features on disk: memory-mapped tensors beyond the memory bound.

When the frozen features of a fit (feature maps, with ``unfreeze >= 1``)
would exceed ``cache_max_gb``, they are written to a memory-mapped file
instead of being recomputed every epoch. The operating system keeps the
pages it has room for and reads the others back as training visits their
rows, so resident memory stays bounded by what the machine can spare.

The file is created beside the disk cache, or in the system's temporary
directory, and removed from its directory as soon as it is mapped (POSIX):
it needs no cleanup, even after a crash, and is freed when the last tensor
viewing it is. Where an open file cannot be removed (Windows), it is
removed when the tensor is garbage-collected.
"""

import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "RowView",
    "disk_tensor",
    "free_disk_bytes",
    "is_disk_backed",
    "lazy_rows_dataset",
    "spill_directory",
    "take_rows",
]

# Rows moved per step when kept rows are compacted in place: bounds the
# memory of that copy whatever the row size.
_COMPACT_BYTES = 64 * 1024**2


def spill_directory(stores):
    """Where features beyond the memory bound go: the disk cache, if any.

    Parameters
    ----------
    stores : sequence of feature stores
        The estimator's stores; the first with a ``directory`` wins.

    Returns
    -------
    str
        A directory that exists: the system's temporary directory (which
        honours ``TMPDIR``) without a disk cache, or when the cache's
        location cannot be created (the disk store then warns and goes on
        without it, and so does the fit).
    """
    for store in stores:
        entries = getattr(store, "directory", None)
        if entries is not None:
            # Beside the cache's entries, not among them.
            location = Path(entries).parent
            try:
                location.mkdir(parents=True, exist_ok=True)
            except OSError:
                break
            return str(location)
    return tempfile.gettempdir()


def free_disk_bytes(directory):
    """Free bytes on the file system of ``directory``."""
    return shutil.disk_usage(directory).free


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def disk_tensor(shape, directory, dtype=torch.float32):
    """A zero-filled tensor of ``shape`` mapped from a new file in ``directory``.

    The file is sparse until rows are written, so rows never written (images
    that failed to load) cost no disk.
    """
    shape = tuple(int(s) for s in shape)
    n_elements = int(np.prod(shape, dtype=np.int64))
    itemsize = torch.empty((), dtype=dtype).element_size()
    fd, path = tempfile.mkstemp(prefix="sktransfer-features-", suffix=".bin",
                                dir=directory)
    try:
        os.ftruncate(fd, max(1, n_elements * itemsize))
    finally:
        os.close(fd)
    try:
        flat = torch.from_file(path, shared=True, size=n_elements, dtype=dtype)
    except BaseException:
        _remove_quietly(path)
        raise
    tensor = flat.view(shape)
    try:
        os.remove(path)  # the mapping outlives the name
    except OSError:
        weakref.finalize(tensor, _remove_quietly, path)
    return tensor


def is_disk_backed(tensor):
    """Whether ``tensor`` views a memory-mapped file of :func:`disk_tensor`."""
    return tensor is not None and tensor.untyped_storage().filename is not None


def take_rows(features, keep):
    """Rows of ``features`` where the boolean array ``keep`` is True.

    An in-memory tensor is indexed as usual. A disk-backed one is compacted
    in place, a bounded slab at a time, and returned as a view of its first
    ``keep.sum()`` rows, so dropping bad images never loads the features.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.all():
        return features
    if not is_disk_backed(features):
        return features[torch.from_numpy(keep)]
    kept = np.flatnonzero(keep)
    row_bytes = max(1, features[:1].nbytes)
    step = max(1, _COMPACT_BYTES // row_bytes)
    # kept[j] >= j, so each slab reads rows at or after the ones it writes.
    for start in range(0, len(kept), step):
        rows = torch.from_numpy(kept[start : start + step])
        features[start : start + len(rows)] = features[rows]
    return features[: len(kept)]


class RowView:
    """Rows ``idx`` of ``features``, read only when sliced.

    Supports ``len`` and indexing, which is what batched loops need, without
    the copy that ``features[idx]`` makes of every selected row.
    """

    def __init__(self, features, idx):
        self.features = features
        self.idx = np.asarray(idx, dtype=np.int64)

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, key):
        return self.features[torch.from_numpy(np.atleast_1d(self.idx[key]))]


class _LazyRows(Dataset):
    """Training items ``(row, target)`` read from ``features`` per batch."""

    def __init__(self, features, targets, weights, idx):
        self.rows = RowView(features, idx)
        self.targets = targets
        self.weights = weights

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, items):
        items = np.asarray(items, dtype=np.int64)
        order = np.argsort(self.rows.idx[items], kind="stable")
        # Read in file order (sequential pages), then restore the batch order.
        in_file_order = self.rows[items[order]]
        batch = torch.empty_like(in_file_order)
        batch[torch.from_numpy(order)] = in_file_order
        rows = self.rows.idx[items]
        if self.weights is None:
            return [(x, self.targets[r]) for r, x in zip(rows, batch)]
        return [
            ({"X": x, "sample_weight": self.weights[r]}, self.targets[r])
            for r, x in zip(rows, batch)
        ]


def lazy_rows_dataset(features, targets, weights, idx):
    """Rows ``idx`` of disk-backed ``features`` as a Dataset, read per batch.

    Items are those of :func:`~sktransfer._data.tensor_dataset`: ``(row,
    target)``, or ``({"X": row, "sample_weight": w}, target)`` with
    ``weights``.
    """
    return _LazyRows(features, targets, weights, idx)
