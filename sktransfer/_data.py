"""Validate arrays of image paths and feed them to torch through Datasets."""

import numpy as np
import torch
from skorch.dataset import Dataset as SkorchDataset
from torch.utils.data import Dataset

from ._images import ImageLoadError
from ._sources import MEMORY, as_image_sources, check_images, describe_value
from ._spill import is_disk_backed, lazy_rows_dataset

__all__ = [
    "ImageDataset",
    "check_image_paths",
    "collate_with_errors",
    "tensor_dataset",
    "with_sample_weight",
]


def check_image_paths(X, *, name="X"):
    """Validate ``X`` as a 1-D sequence of paths; return an object array of str.

    Object dtype matters: a numpy unicode array is as wide as its longest
    path times four bytes, for every element. URLs count as paths here; the
    estimators take in-memory images too, through
    :func:`~sktransfer._sources.check_images`.
    """
    sources = check_images(X, name=name)
    in_memory = np.flatnonzero(sources.kinds == MEMORY)
    if in_memory.size:
        i = int(in_memory[0])
        raise ValueError(
            f"{name}[{i}] is {describe_value(sources[i])}, not an image file "
            f"path. Every element of {name} must be a str or pathlib.Path "
            "naming an image file."
        )
    return sources.items


class ImageDataset(Dataset):
    """Images of ``paths`` as transformed tensors.

    Items are ``(image, target)``. With ``targets=None`` the target is the
    sample's index and load failures are returned, not raised, as a zero
    image and a flag, so one pass can report every bad file at once:
    items are then ``(image, index, error_message)``.

    Parameters
    ----------
    paths : ImageSources or array-like of str
        The images (see :func:`~sktransfer._sources.check_images`).
    transform : callable
        Maps an RGB Pillow image to a tensor.
    targets : array-like of int or None, default=None
        Class indices for training; ``None`` for feature extraction.
    max_image_pixels : int or None, default=None
        Passed to the image loader.
    min_side : int or None, default=None
        Shorter side the transform resizes to; lets JPEGs decode at reduced
        scale.
    intensity : str or tuple, default="auto"
        How pixel values become 8 bits (the fitted preprocessing's policy).
    """

    def __init__(
        self, paths, transform, targets=None, max_image_pixels=None, min_side=None,
        intensity="auto",
    ):
        self.paths = as_image_sources(paths)
        self.transform = transform
        self.targets = targets
        self.max_image_pixels = max_image_pixels
        self.min_side = min_side
        self.intensity = intensity

    def __len__(self):
        return len(self.paths)

    def _load(self, i):
        img = self.paths.open(
            i, max_image_pixels=self.max_image_pixels, min_side=self.min_side,
            intensity=self.intensity,
        )
        return self.transform(img)

    def __getitem__(self, i):
        if self.targets is not None:
            return self._load(i), self.targets[i]
        try:
            return self._load(i), i, ""
        except ImageLoadError as exc:
            return None, i, exc.reason


def collate_with_errors(items):
    """Stack loaded images; keep indices and messages of the failed ones."""
    ok = [(img, i) for img, i, err in items if not err]
    failed = [(i, err) for _, i, err in items if err]
    images = torch.stack([img for img, _ in ok]) if ok else None
    indices = [i for _, i in ok]
    return images, indices, failed


def tensor_dataset(features, targets, weights, idx):
    """Rows ``idx`` of cached features as a skorch Dataset.

    With ``weights``, inputs are dicts ``{"X": row, "sample_weight": w}``,
    the form ``TransferNet`` takes sample weights in. Memory-mapped features
    are read a batch at a time rather than copied.
    """
    if is_disk_backed(features):
        return lazy_rows_dataset(features, targets, weights, idx)
    if weights is None:
        return SkorchDataset(features[idx], targets[idx])
    return SkorchDataset(
        {"X": features[idx], "sample_weight": weights[idx]}, targets[idx]
    )


class _WeightedItems(Dataset):
    """Items ``({"X": image, "sample_weight": w}, target)`` of a dataset."""

    def __init__(self, dataset, weights):
        self.dataset = dataset
        self.weights = weights

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return {"X": x, "sample_weight": self.weights[i]}, y


def with_sample_weight(dataset, weights):
    """``dataset`` whose inputs carry ``weights`` (one per item), if any."""
    return dataset if weights is None else _WeightedItems(dataset, weights)
