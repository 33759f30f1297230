"""The frozen-feature pipeline: run the frozen prefix over images once.

A :class:`FrozenPass` says how (module, preprocessing, device, precision,
batching, cache); :func:`extract_features` computes only what the cache does
not hold, within a memory bound; :func:`training_features` decides, for a
fit, whether to cache or to fall back to running the prefix every epoch;
:func:`map_features` serves prediction in bounded chunks (and
:func:`map_views` test-time views of the same images); and
:func:`find_bad_images` scans files when nothing is extracted up front.
"""

import contextlib
import dataclasses
import math
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ._augment import tta_average
from ._cache import DiskFeatureStore, model_cache_key, module_structure_digest
from ._data import ImageDataset, collate_with_errors
from ._decoded import DecodedImages
from ._images import BadImagesError, ImageLoadError
from ._runtime import autocast_context, device_scope, feature_dtype, loader_workers
from ._sources import as_image_sources, check_images
from ._spill import disk_tensor, free_disk_bytes, spill_directory
from ._transforms import eval_transform
from ._warnings import user_stacklevel

__all__ = [
    "FeatureCacheTooLarge",
    "FrozenPass",
    "extract_features",
    "find_bad_images",
    "format_bytes",
    "frozen_cache_key",
    "map_features",
    "map_views",
    "view_features",
    "training_features",
]

# Images per prediction chunk: bounds the frozen features held at once
# (about 0.8 GB for resnet50 at unfreeze=1) while keeping loader start-up rare.
PREDICT_CHUNK = 1024


@dataclass(frozen=True)
class FrozenPass:
    """How to run a frozen prefix over images, and where to cache it.

    Parameters
    ----------
    module : torch.nn.Module
        The frozen prefix, in eval mode, on ``device``.
    preprocessing : Preprocessing
        The evaluation transform's resize, crop and normalisation.
    device : str
        Where ``module`` runs.
    dtype : torch.dtype or None
        Autocast dtype; None runs in float32. The features are kept in the
        same dtype (:attr:`feature_dtype`).
    batch_size : int
        Images per forward pass.
    num_workers : int or None
        Loader processes; None picks from the number of images.
    max_image_pixels : int or None
        Decompression-bomb guard of the image loader.
    cache_key : str or None
        Key of the prefix in the feature cache; None disables the cache.
    stores : tuple of feature stores
        Looked up in order; new features are written to all of them.
    verbose : int
        Progress bars when positive.
    transform : callable or None, default=None
        Image to tensor; None is the evaluation transform of ``preprocessing``.
    """

    module: torch.nn.Module
    preprocessing: object
    device: str
    dtype: object
    batch_size: int
    num_workers: object
    max_image_pixels: object
    cache_key: object
    stores: tuple = ()
    verbose: int = 0
    transform: object = None

    @property
    def feature_dtype(self):
        """The dtype features are kept in: see :func:`feature_dtype`."""
        return feature_dtype(self.dtype)

    def dataset(self, paths):
        """The images at ``paths`` as this pass feeds them to ``module``."""
        return ImageDataset(
            paths, self.transform or eval_transform(self.preprocessing),
            max_image_pixels=self.max_image_pixels,
            min_side=self.preprocessing.resize_size,
            intensity=self.preprocessing.intensity,
        )


def frozen_cache_key(module, *, weights_id, seed, preprocessing, dtype):
    """Cache key of the fitted frozen prefix ``module``, or None.

    The key covers what fitting produced, not the constructor parameters:
    the prefix's architecture (:func:`~sktransfer._cache.module_structure_digest`:
    every layer with its settings, every tensor's name, dtype and shape), the
    identity of the weights it was built with (``weights_id``: the weights
    name, or the SHA-256 of a weights file; for random weights, the seed),
    the preprocessing and the precision. Two estimators whose frozen parts are
    the same share entries whatever their backbone name or ``unfreeze``; a
    name registered again with another architecture misses.

    Weight values are not hashed: the frozen prefix never changes after it
    is built, so their identity stands for them, and the key stays
    computable in microseconds at every call (a SHA-256 of resnet50's 102 MB
    of tensors takes about 0.1 s, of a ViT-L about 1 s). Random weights
    without a seed are never built again: None, nothing is cached.
    """
    if weights_id == "random" and seed is None:
        return None
    return model_cache_key(
        architecture=module_structure_digest(module),
        weights=weights_id,
        seed=seed if weights_id == "random" else None,
        preprocessing=preprocessing.to_dict(),
        dtype=str(dtype),
    )


def _run_frozen(frozen, dataset, indices, *, batch_size, device, dtype,
                num_workers, progress):
    """Yield ``(indices, features, failures)`` per batch.

    ``indices`` and the index in each ``(index, reason)`` failure are
    positions in ``dataset`` (elements of ``indices``). Features are on the
    CPU in :func:`feature_dtype` of ``dtype``.
    """
    stored = feature_dtype(dtype)
    device = torch.device(device)
    # Iterating a DataLoader draws a seed from torch's global RNG. Forking it
    # keeps a fit's later shuffling the same whether features came from the
    # cache or were computed here, so results don't depend on cache state.
    # The loader starts inside the device's scope: batches are pinned for
    # the current device, which would otherwise be GPU 0 whatever ``device``.
    with (
        device_scope(device),
        torch.random.fork_rng(devices=[]),
        torch.inference_mode(),
        autocast_context(device, dtype),
    ):
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_with_errors,
            pin_memory=device.type == "cuda",
        )
        for images, batch_indices, failed in loader:
            progress.update(len(batch_indices) + len(failed))
            if images is not None:
                images = images.to(device, non_blocking=True)
                if images.dim() == 4:
                    images = images.contiguous(memory_format=torch.channels_last)
                # Cast on the device: half the bytes cross to the host.
                out = frozen(images).to(stored).cpu()
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

    def __init__(self, n_bytes, max_bytes, row_shape, n_images, disk=None):
        self.n_bytes = n_bytes
        self.max_bytes = max_bytes
        self.row_shape = tuple(row_shape)
        self.n_images = n_images
        message = (
            f"The frozen features of {n_images:,} images would take "
            f"{format_bytes(n_bytes)} ({format_bytes(n_bytes / n_images)} per "
            f"image, shape {self.row_shape}), more than the bound of "
            f"{format_bytes(max_bytes)}"
        )
        if disk is not None:
            directory, free = disk
            message += (
                f" and more than the {format_bytes(free)} free in {directory}, "
                "where they would be memory-mapped"
            )
        super().__init__(message + ".")


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
    Beyond ``max_bytes`` it is memory-mapped from a file in ``spill_dir``
    (:func:`~sktransfer._spill.disk_tensor`) when one is given and its disk
    has room. Rows are held in ``dtype``, and ``max_bytes`` counts its
    bytes: half-precision features fit twice as many images in a bound.
    """

    def __init__(self, n, max_bytes, spill_dir=None, dtype=torch.float32):
        self.n = n
        self.max_bytes = max_bytes
        self.spill_dir = spill_dir
        self.dtype = dtype
        self.tensor = None
        self.spilled = False

    def keeps_in(self, store):
        """Whether rows go into ``store`` too.

        Rows beyond ``max_bytes`` are on disk because memory was not to hold
        them, so no in-memory store keeps a copy either.
        """
        return not self.spilled or isinstance(store, DiskFeatureStore)

    def _allocate(self, row_shape):
        shape = (self.n, *row_shape)
        n_bytes = self.dtype.itemsize * math.prod(shape)
        if self.max_bytes is None or n_bytes <= self.max_bytes:
            self.tensor = torch.zeros(shape, dtype=self.dtype)
            return
        if self.spill_dir is None:
            raise FeatureCacheTooLarge(n_bytes, self.max_bytes, row_shape, self.n)
        free = free_disk_bytes(self.spill_dir)
        if free < n_bytes:
            raise FeatureCacheTooLarge(
                n_bytes, self.max_bytes, row_shape, self.n,
                disk=(self.spill_dir, free),
            )
        self.tensor = disk_tensor(shape, self.spill_dir, dtype=self.dtype)
        self.spilled = True

    def set_one(self, i, row):
        if self.tensor is None:
            self._allocate(row.shape)
        self.tensor[i] = row

    def set_many(self, indices, batch):
        if self.tensor is None:
            self._allocate(batch.shape[1:])
        self.tensor[torch.as_tensor(indices, dtype=torch.long)] = batch


def _expected_row_shape(frozen_pass):
    """Shape of one output row of the prefix, from an empty batch.

    Disk entries whose shape differs are misses. A batch of zero images
    costs next to nothing and sees no image; a module that refuses empty
    batches gets one blank image instead. Memoised per prefix.
    """
    crop = frozen_pass.preprocessing.crop_size
    size = tuple(crop) if isinstance(crop, (tuple, list)) else (crop, crop)
    channels = frozen_pass.preprocessing.channels
    memo = _ROW_SHAPES.setdefault(frozen_pass.module, {})
    key = (size, channels, str(frozen_pass.dtype))
    if key not in memo:
        device = torch.device(frozen_pass.device)
        with (
            torch.random.fork_rng(devices=[]),
            torch.inference_mode(),
            autocast_context(device, frozen_pass.dtype),
        ):
            try:
                out = frozen_pass.module(torch.zeros((0, channels, *size),
                                                     device=device))
            except RuntimeError:
                out = frozen_pass.module(torch.zeros((1, channels, *size),
                                                     device=device))
            memo[key] = tuple(out.shape[1:])
    return memo[key]


_ROW_SHAPES = weakref.WeakKeyDictionary()


def _lookup(frozen_pass, stores, model_key, paths, fingerprints, rows):
    """Fill ``rows`` from the stores; return a boolean list of hits and errors.

    A hit in a later (slower) store is copied into the earlier ones, so the
    next lookup of an on-disk entry is served from memory. A disk entry is
    used only with the shape the prefix produces, and any entry only in the
    dtype the features are kept in (the key names the precision, but a file
    may have been written by something else). Every hit is checked as a
    miss would be, up to decoding (:meth:`ImageSources.check`): the pixel
    limit and the bad-image policy hold whether or not features were cached.
    """
    hits = [False] * len(fingerprints)
    errors = []
    expected = None
    dtype = frozen_pass.feature_dtype
    for i, fp in enumerate(fingerprints):
        if fp is None:
            continue
        for s, store in enumerate(stores):
            found = store.get(model_key, fp)
            if found is not None and found.dtype != dtype:
                found = None
            if found is not None and isinstance(store, DiskFeatureStore):
                if expected is None:
                    expected = _expected_row_shape(frozen_pass)
                if tuple(found.shape) != expected:
                    found = None
            if found is None:
                continue
            try:
                paths.check(i, max_image_pixels=frozen_pass.max_image_pixels)
            except ImageLoadError as exc:
                errors.append((i, exc.reason))
                hits[i] = True  # nothing to compute: the file is refused
                break
            rows.set_one(i, found)
            for faster in stores[:s]:
                if rows.keeps_in(faster):
                    faster.put(model_key, fp, found)
            hits[i] = True
            break
    return hits, errors


def extract_features(frozen_pass, paths, *, max_bytes=None, use_cache=True,
                     desc="Extracting features", spill_dir=None):
    """Frozen-prefix outputs for every image, computing only cache misses.

    Parameters
    ----------
    frozen_pass : FrozenPass
        The prefix and how to run and cache it.
    paths : ImageSources or ndarray of str
        The images (see :func:`~sktransfer._sources.check_images`).
    max_bytes : int or None, default=None
        Bound on the returned tensor. It is checked as soon as the size of
        one row is known (the first cache hit or the first computed batch),
        before the other images are processed.
    use_cache : bool, default=True
        Look up and store features in the cache the pass names.
    desc : str, default="Extracting features"
        Label of the progress bar.
    spill_dir : str or None, default=None
        Beyond ``max_bytes``, memory-map the result from a file in this
        directory instead of raising, if its disk has room.

    Returns
    -------
    features : torch.Tensor of shape (n_images, ...) or None
        On the CPU in the pass's :attr:`~FrozenPass.feature_dtype` (bf16 or
        fp16 when the prefix runs in it, else float32), memory-mapped when
        spilled; rows of images that failed to load are zeros. None when no
        image could be loaded.
    errors : list of (int, str)
        Index and reason of every image that failed to load, in order.

    Raises
    ------
    FeatureCacheTooLarge
        When the features would take more than ``max_bytes`` (and, with
        ``spill_dir``, more than its free disk space).
    """
    paths = as_image_sources(paths)
    n = len(paths)
    model_key = frozen_pass.cache_key if use_cache else None
    stores = list(frozen_pass.stores) if model_key is not None else []
    fingerprints = paths.fingerprints() if stores else [None] * n
    rows = _Rows(n, max_bytes, spill_dir, dtype=frozen_pass.feature_dtype)
    hits, errors = _lookup(frozen_pass, stores, model_key, paths, fingerprints, rows)
    misses = [i for i in range(n) if not hits[i]]
    if misses:
        num_workers = loader_workers(
            frozen_pass.num_workers, len(misses), frozen_pass.batch_size
        )
        progress = tqdm(
            total=len(misses), desc=desc, unit="img",
            disable=not frozen_pass.verbose, leave=False,
        )
        with progress, contextlib.closing(_run_frozen(
            frozen_pass.module, frozen_pass.dataset(paths), misses,
            batch_size=frozen_pass.batch_size, device=frozen_pass.device,
            dtype=frozen_pass.dtype, num_workers=num_workers, progress=progress,
        )) as batches:
            for idx, out, failed in batches:
                errors.extend(failed)
                if not idx:
                    continue
                rows.set_many(idx, out)
                for i, row in zip(idx, out.unbind(0)):
                    if fingerprints[i] is not None:
                        for store in stores:
                            if rows.keeps_in(store):
                                store.put(model_key, fingerprints[i], row)
    errors.sort()
    return rows.tensor, errors


def training_features(frozen_pass, paths, *, max_gb):
    """Frozen features of the training images, computed once for the fit.

    Within ``max_gb`` they are held in memory; beyond it they are
    memory-mapped from a file beside the disk cache or in the temporary
    directory (:func:`~sktransfer._spill.spill_directory`), which the
    operating system pages in as training reads rows.

    Returns ``(features, errors)``, or ``(None, None)`` with a warning when
    they fit neither: the caller then runs the frozen part every epoch
    instead.
    """
    try:
        return extract_features(
            frozen_pass, paths, max_bytes=int(max_gb * 1024**3),
            spill_dir=spill_directory(frozen_pass.stores),
        )
    except FeatureCacheTooLarge as exc:
        warnings.warn(
            f"{exc} The frozen part will run every epoch instead of being "
            f"cached (cache_max_gb={max_gb}), which is slower. "
            "If the memory is available, raise cache_max_gb to at least "
            f"{exc.n_bytes / 1024**3:.3g}; otherwise free disk space there, "
            "point TMPDIR or cache= at a larger disk, or choose a smaller "
            "unfreeze or image_size, which shrinks the features.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return None, None


def map_features(frozen_pass, X, fn):
    """``fn`` of the frozen features of ``X``, one row per input.

    Runs in chunks of ``PREDICT_CHUNK`` images, so a feature-map prefix
    (``unfreeze>0``) over many images is never held in memory at once.
    ``fn`` gets each chunk in the pass's
    :attr:`~FrozenPass.feature_dtype`, as training saw the features.
    Bad files raise, listing every one, after all chunks were read.
    """
    paths = check_images(X)
    outputs, errors = [], []
    for start in range(0, len(paths), PREDICT_CHUNK):
        features, chunk_errors = extract_features(
            frozen_pass, paths[start : start + PREDICT_CHUNK]
        )
        errors.extend((paths.label(start + i), reason) for i, reason in chunk_errors)
        if not errors:
            outputs.append(fn(features))
    _raise_bad_inputs(errors)
    return torch.cat(outputs)


def _raise_bad_inputs(errors):
    if errors:
        raise BadImagesError(
            errors,
            "every input needs an output, so nothing is skipped at predict "
            "time; fix or remove these files",
        )


def map_views(frozen_pass, X, views, fn, *, output="logits"):
    """Class probabilities of ``X`` averaged over test-time ``views``.

    Each chunk of ``PREDICT_CHUNK`` files is decoded once into ``uint8``
    squares (:class:`~sktransfer._decoded.DecodedImages`); every view of a
    batch then runs through the frozen prefix and ``fn`` (frozen features to
    logits), and the softmax outputs are averaged
    (:func:`~sktransfer._augment.tta_average`). With ``output="proba"``,
    ``fn``'s outputs are averaged as they are (per-label probabilities,
    regression values). The views are not cached.

    Returns
    -------
    proba : torch.Tensor of shape (n_images, n_classes)
    """
    paths = check_images(X)
    device = torch.device(frozen_pass.device)
    stored = frozen_pass.feature_dtype

    def logits(batch):
        with torch.inference_mode(), autocast_context(device, frozen_pass.dtype):
            batch = batch.to(device).contiguous(memory_format=torch.channels_last)
            # Rounded as cached features are, so views match a plain predict.
            features = frozen_pass.module(batch).to(stored).cpu()
        return fn(features)

    outputs, errors = [], []
    batch_size = frozen_pass.batch_size
    for start in range(0, len(paths), PREDICT_CHUNK):
        chunk = paths[start : start + PREDICT_CHUNK]
        num_workers = loader_workers(frozen_pass.num_workers, len(chunk), batch_size)
        decoded = DecodedImages.decode(
            chunk, frozen_pass.preprocessing, num_workers=num_workers,
            batch_size=batch_size, max_image_pixels=frozen_pass.max_image_pixels,
        )
        errors.extend((chunk.label(i), reason) for i, reason in decoded.errors)
        if errors:
            continue
        for first in range(0, len(decoded), batch_size):
            batch = decoded.images[first : first + batch_size]
            outputs.append(tta_average(logits, batch, views, output=output))
    _raise_bad_inputs(errors)
    return torch.cat(outputs)


def view_features(frozen_pass, decoded, transforms, *, max_bytes=None,
                  num_workers=0):
    """Frozen features of every stored image under each of ``transforms``.

    Parameters
    ----------
    frozen_pass : FrozenPass
        The prefix, device and precision (its cache is not used: random
        views are never served to another fit).
    decoded : DecodedImages
        The images, without bad rows.
    transforms : list of callable
        Each maps a stored ``uint8`` image to the prefix's input.
    max_bytes : int or None, default=None
        Bound on the result, checked after the first batch.
    num_workers : int, default=0
        DataLoader processes applying the transforms.

    Returns
    -------
    features : torch.Tensor of shape (len(transforms), n_images, ...)
        On the CPU, in the pass's :attr:`~FrozenPass.feature_dtype`.

    Raises
    ------
    FeatureCacheTooLarge
        When the features would take more than ``max_bytes``.
    """
    device = torch.device(frozen_pass.device)
    stored = frozen_pass.feature_dtype
    out = None
    for v, transform in enumerate(transforms):
        loader = DataLoader(
            decoded.dataset(transform=transform), batch_size=frozen_pass.batch_size,
            num_workers=num_workers,
        )
        with torch.inference_mode(), autocast_context(device, frozen_pass.dtype):
            for images, rows in loader:
                images = images.to(device).contiguous(memory_format=torch.channels_last)
                batch = frozen_pass.module(images).to(stored).cpu()
                if out is None:
                    shape = (len(transforms), len(decoded), *batch.shape[1:])
                    n_bytes = math.prod(shape) * stored.itemsize
                    if max_bytes is not None and n_bytes > max_bytes:
                        raise FeatureCacheTooLarge(
                            n_bytes, max_bytes, tuple(batch.shape[1:]),
                            len(transforms) * len(decoded),
                        )
                    out = torch.empty(shape, dtype=stored)
                out[v, rows] = batch
    return out


def _decode_only(image):
    return torch.zeros(1)


def find_bad_images(frozen_pass, paths):
    """Decode every image once and return ``(index, reason)`` of the bad ones.

    Used before training when features are not cached, so a bad file is
    reported before the first epoch rather than in the middle of one. The
    images are read as ``frozen_pass`` reads them, but nothing is computed.
    """
    scan = dataclasses.replace(
        frozen_pass, module=torch.nn.Identity(), device="cpu", dtype=None,
        batch_size=64, cache_key=None, transform=_decode_only,
    )
    _, errors = extract_features(scan, paths, desc="Checking images")
    return errors
