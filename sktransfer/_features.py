"""Run the frozen prefix over image files once, with the feature cache."""

import contextlib
import math
import os

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ._cache import image_fingerprint
from ._data import ImageDataset, collate_with_errors

__all__ = [
    "FeatureCacheTooLarge",
    "autocast_context",
    "cudnn_autotuning",
    "default_num_workers",
    "extract_features",
    "find_bad_images",
    "torch_threads",
]


def default_num_workers(n_images, batch_size):
    """Decode in background workers, but not for a handful of images."""
    if n_images <= 2 * batch_size:
        return 0
    return min(4, max(1, (os.cpu_count() or 1) - 1))


@contextlib.contextmanager
def torch_threads(n_threads):
    """Run the block with ``n_threads`` intra-op threads, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast_context(device, dtype):
    """``torch.autocast`` for ``dtype``, or a no-op for full precision."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def cudnn_autotuning(device):
    """Let cuDNN time its convolution algorithms and keep the fastest.

    Images arrive at one fixed size, so the search is paid once per shape.
    Off the GPU, or when the user asked cuDNN for deterministic results,
    nothing changes.
    """
    cudnn = torch.backends.cudnn
    if torch.device(device).type != "cuda" or cudnn.deterministic:
        yield
        return
    before = cudnn.benchmark
    cudnn.benchmark = True
    try:
        yield
    finally:
        cudnn.benchmark = before


def _run_frozen(frozen, dataset, indices, *, batch_size, device, dtype,
                num_workers, progress):
    """Yield ``(indices, features, failures)`` per batch.

    ``indices`` and the index in each ``(index, reason)`` failure are
    positions in ``dataset`` (elements of ``indices``).
    """
    device = torch.device(device)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_with_errors,
        pin_memory=device.type == "cuda",
    )
    # Iterating a DataLoader draws a seed from torch's global RNG. Forking it
    # keeps a fit's later shuffling the same whether features came from the
    # cache or were computed here, so results don't depend on cache state.
    with (
        torch.random.fork_rng(devices=[]),
        torch.inference_mode(),
        autocast_context(device, dtype),
        cudnn_autotuning(device),
    ):
        for images, batch_indices, failed in loader:
            progress.update(len(batch_indices) + len(failed))
            if images is not None:
                images = images.to(device, non_blocking=True)
                if images.dim() == 4:
                    images = images.contiguous(memory_format=torch.channels_last)
                out = frozen(images).float().cpu()
                # Subset hands the dataset's own indices to ImageDataset, which
                # returns them: they already index ``paths``, not ``indices``.
                yield list(batch_indices), out, []
            if failed:
                yield [], None, list(failed)


class FeatureCacheTooLarge(MemoryError):
    """The frozen features of all images would not fit in ``max_bytes``.

    Raised by :func:`extract_features` after the first row is known, before
    the remaining images are processed, so the caller can fall back to
    running the frozen part on the fly.
    """

    def __init__(self, n_bytes, max_bytes, row_shape, n_images):
        self.n_bytes = n_bytes
        self.max_bytes = max_bytes
        self.row_shape = tuple(row_shape)
        self.n_images = n_images
        super().__init__(
            f"The frozen features of {n_images:,} images would take "
            f"{format_bytes(n_bytes)} ({format_bytes(n_bytes / n_images)} per "
            f"image, shape {self.row_shape}), more than the bound of "
            f"{format_bytes(max_bytes)}."
        )


def format_bytes(n_bytes):
    """``n_bytes`` in the largest binary unit that keeps it at least 1."""
    for unit in ("B", "KiB", "MiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.3g} GiB"


class _Rows:
    """The output tensor, allocated once the first row's shape is known.

    Rows are written in place, so extracting ``n`` images needs one
    ``(n, ...)`` tensor rather than a list of rows plus their stacked copy.
    """

    def __init__(self, n, max_bytes):
        self.n = n
        self.max_bytes = max_bytes
        self.tensor = None

    def _allocate(self, row_shape):
        n_bytes = 4 * self.n * math.prod(row_shape)  # float32
        if self.max_bytes is not None and n_bytes > self.max_bytes:
            raise FeatureCacheTooLarge(n_bytes, self.max_bytes, row_shape, self.n)
        self.tensor = torch.zeros((self.n, *row_shape), dtype=torch.float32)

    def set_one(self, i, row):
        if self.tensor is None:
            self._allocate(row.shape)
        self.tensor[i] = row

    def set_many(self, indices, batch):
        if self.tensor is None:
            self._allocate(batch.shape[1:])
        self.tensor[torch.as_tensor(indices, dtype=torch.long)] = batch


def _lookup(stores, model_key, fingerprints, rows):
    """Fill ``rows`` from the stores; return a boolean list of hits.

    A hit in a later (slower) store is copied into the earlier ones, so the
    next lookup of an on-disk entry is served from memory.
    """
    hits = [False] * len(fingerprints)
    for i, fp in enumerate(fingerprints):
        if fp is None:
            continue
        for s, store in enumerate(stores):
            found = store.get(model_key, fp)
            if found is not None:
                rows.set_one(i, found)
                for faster in stores[:s]:
                    faster.put(model_key, fp, found)
                hits[i] = True
                break
    return hits


def extract_features(
    frozen, paths, *, transform, min_side=None, max_image_pixels=None,
    batch_size=64, device="cpu", dtype=None, num_workers=None,
    model_key=None, stores=(), max_bytes=None, verbose=0,
    desc="Extracting features",
):
    """Frozen-prefix outputs for every image, computing only cache misses.

    Parameters
    ----------
    frozen : torch.nn.Module
        The frozen prefix, in eval mode, on ``device``.
    paths : ndarray of str
        Image files.
    transform : callable
        Evaluation transform (Pillow image to tensor).
    model_key : str or None
        Cache key of the model settings; None disables ``stores``.
    stores : sequence of feature stores
        Looked up in order; new features are written to all of them.
    max_bytes : int or None, default=None
        Bound on the returned tensor. It is checked as soon as the size of
        one row is known (the first cache hit or the first computed batch),
        before the other images are processed.

    Returns
    -------
    features : torch.Tensor of shape (n_images, ...) or None
        float32 on the CPU; rows of images that failed to load are zeros.
        None when no image could be loaded.
    errors : list of (int, str)
        Index and reason of every image that failed to load, in order.

    Raises
    ------
    FeatureCacheTooLarge
        When the features would take more than ``max_bytes``.
    """
    n = len(paths)
    stores = list(stores) if model_key is not None else []
    fingerprints = [image_fingerprint(p) for p in paths] if stores else [None] * n
    rows = _Rows(n, max_bytes)
    hits = _lookup(stores, model_key, fingerprints, rows)
    misses = [i for i in range(n) if not hits[i]]
    errors = []
    if misses:
        dataset = ImageDataset(
            paths, transform, max_image_pixels=max_image_pixels, min_side=min_side
        )
        if num_workers is None:
            num_workers = default_num_workers(len(misses), batch_size)
        progress = tqdm(
            total=len(misses), desc=desc, unit="img", disable=not verbose,
            leave=False,
        )
        with progress, contextlib.closing(_run_frozen(
            frozen, dataset, misses, batch_size=batch_size, device=device,
            dtype=dtype, num_workers=num_workers, progress=progress,
        )) as batches:
            for idx, out, failed in batches:
                errors.extend(failed)
                if not idx:
                    continue
                rows.set_many(idx, out)
                for i, row in zip(idx, out.unbind(0)):
                    if fingerprints[i] is not None:
                        for store in stores:
                            store.put(model_key, fingerprints[i], row)
    errors.sort()
    return rows.tensor, errors


def _decode_only(image):
    return torch.zeros(1)


def find_bad_images(paths, *, max_image_pixels, min_side, num_workers, verbose):
    """Decode every image once and return ``(index, reason)`` of the bad ones.

    Used before training when features are not cached, so a bad file is
    reported before the first epoch rather than in the middle of one.
    """
    _, errors = extract_features(
        torch.nn.Identity(), paths, transform=_decode_only, min_side=min_side,
        max_image_pixels=max_image_pixels, batch_size=64, device="cpu",
        num_workers=num_workers, verbose=verbose, desc="Checking images",
    )
    return errors
