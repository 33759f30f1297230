"""Run the frozen prefix over image files once, with the feature cache."""

import contextlib
import os

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ._cache import image_fingerprint
from ._data import ImageDataset, collate_with_errors

__all__ = [
    "autocast_context",
    "default_num_workers",
    "extract_features",
    "find_bad_images",
]


def default_num_workers(n_images, batch_size):
    """Decode in background workers, but not for a handful of images."""
    if n_images <= 2 * batch_size:
        return 0
    return min(4, max(1, (os.cpu_count() or 1) - 1))


def autocast_context(device, dtype):
    """``torch.autocast`` for ``dtype``, or a no-op for full precision."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _run_frozen(frozen, dataset, indices, *, batch_size, device, dtype,
                num_workers, progress):
    """Yield ``(indices, features)`` per batch and ``(index, reason)`` failures."""
    device = torch.device(device)
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_with_errors,
        pin_memory=device.type == "cuda",
    )
    with torch.inference_mode(), autocast_context(device, dtype):
        for images, batch_indices, failed in loader:
            progress.update(len(batch_indices) + len(failed))
            if images is not None:
                images = images.to(device, non_blocking=True)
                if images.dim() == 4:
                    images = images.contiguous(memory_format=torch.channels_last)
                out = frozen(images).float().cpu()
                # ImageDataset items carry their index in ``dataset``, not
                # in the Subset: they need no mapping through ``indices``.
                yield list(batch_indices), out, []
            if failed:
                yield [], (), list(failed)


def extract_features(
    frozen, paths, *, transform, min_side=None, max_image_pixels=None,
    batch_size=64, device="cpu", dtype=None, num_workers=None,
    model_key=None, stores=(), verbose=0, desc="Extracting features",
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

    Returns
    -------
    features : torch.Tensor of shape (n_images, ...)
        float32 on the CPU; rows of images that failed to load are zeros.
    errors : list of (int, str)
        Index and reason of every image that failed to load, in order.
    """
    n = len(paths)
    stores = list(stores) if model_key is not None else []
    fingerprints = [image_fingerprint(p) for p in paths] if stores else [None] * n
    rows = [None] * n
    for i, fp in enumerate(fingerprints):
        for store in stores if fp is not None else ():
            hit = store.get(model_key, fp)
            if hit is not None:
                rows[i] = hit
                break
    misses = [i for i in range(n) if rows[i] is None]
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
        with progress:
            for idx, out, failed in _run_frozen(
                frozen, dataset, misses, batch_size=batch_size, device=device,
                dtype=dtype, num_workers=num_workers, progress=progress,
            ):
                errors.extend(failed)
                for i, row in zip(idx, out):
                    row = row.clone()  # detach from the batch's storage
                    rows[i] = row
                    if fingerprints[i] is not None:
                        for store in stores:
                            store.put(model_key, fingerprints[i], row)
    errors.sort()
    template = next(r for r in rows if r is not None) if len(errors) < n else None
    if template is None:
        return None, errors
    zeros = torch.zeros_like(template)
    features = torch.stack([zeros if r is None else r for r in rows])
    return features, errors


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
