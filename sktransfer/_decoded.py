"""Images decoded once per fit and kept in memory as one uint8 tensor.

Reading and decoding a JPEG costs far more than augmenting the decoded
pixels, so when a fit runs several epochs with augmentation, each file is
decoded once into :class:`DecodedImages` and every epoch draws its random
views from memory.

Each image is stored as the ``S x S`` centre square, ``S = resize_size``,
of the image resized so its shorter side is ``S``, exactly as
``eval_transform`` resizes it. A fixed square keeps memory at
``n * 3 * S**2`` bytes (147 KiB per image at ``S = 224``, 158 KiB at 232),
whatever the input sizes, and lets batches be plain slices. What is lost is
the border beyond the square on the long side, which the evaluation crop
drops anyway.
"""


import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ._data import ImageDataset, collate_with_errors
from ._runtime import usable_num_workers
from ._transforms import resize_steps

__all__ = [
    "DecodedImages",
    "DecodedImagesTooLargeError",
    "DecodedDataset",
    "decoded_nbytes",
]


class DecodedImagesTooLargeError(ValueError):
    """Decoding would need more memory than allowed.

    Attributes ``n_bytes`` (needed) and ``max_bytes`` (allowed) let the
    caller fall back to reading the files in every epoch.
    """

    def __init__(self, n_bytes, max_bytes, n_images, side):
        self.n_bytes = n_bytes
        self.max_bytes = max_bytes
        super().__init__(
            f"Keeping {n_images} decoded images of {side}x{side} pixels in memory "
            f"needs {n_bytes:,} bytes, more than max_bytes={max_bytes:,}."
        )


def decoded_nbytes(n_images, prep):
    """Bytes :class:`DecodedImages` needs for ``n_images`` images."""
    return int(n_images) * prep.channels * prep.resize_size**2


def store_transform(prep):
    """PIL image to the stored ``uint8`` tensor ``(3, S, S)``.

    The resize is ``eval_transform``'s (same interpolation and antialias,
    applied to the PIL image), so the evaluation view of a stored image is
    the tensor ``eval_transform`` makes from the file.
    """
    return v2.Compose([
        *resize_steps(prep), v2.CenterCrop(prep.resize_size), v2.PILToTensor(),
    ])


class DecodedImages:
    """Every image of ``paths`` decoded once, as one ``uint8`` tensor.

    Build with :meth:`decode`. Rows of files that could not be read stay
    zero and are listed in ``errors``; :meth:`dataset` refuses them, so no
    bad file is used or dropped without the caller deciding.

    Attributes
    ----------
    images : torch.Tensor
        ``uint8``, shape ``(n, 3, S, S)``, ``S = prep.resize_size``.
    errors : list of (int, str)
        ``(index, reason)`` of each file that could not be used.
    prep : Preprocessing
        The preprocessing the images were resized for.

    Examples
    --------
    >>> from sktransfer._transforms import Preprocessing
    >>> prep = Preprocessing(36, 32, (0.5,) * 3, (0.25,) * 3)
    >>> decoded = DecodedImages.decode(["missing.jpg"], prep)
    >>> decoded.errors
    [(0, 'file does not exist')]
    """

    def __init__(self, images, errors, prep):
        self.images = images
        self.errors = errors
        self.prep = prep

    def __len__(self):
        return self.images.shape[0]

    @property
    def nbytes(self):
        return self.images.numel() * self.images.element_size()

    @property
    def ok(self):
        """Boolean mask of the rows that hold a decoded image."""
        mask = np.ones(len(self), dtype=bool)
        mask[[i for i, _ in self.errors]] = False
        return mask

    def take(self, mask):
        """The rows where ``mask`` is True, renumbered from 0.

        Used once bad files are left out, so rows line up with the kept
        paths again. Taking every row returns ``self`` without a copy.
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.all():
            return self
        kept = set(np.flatnonzero(mask).tolist())
        bad = [(i, r) for i, r in self.errors if i in kept]
        if bad:
            raise ValueError(
                f"Row {bad[0][0]} could not be decoded ({bad[0][1]}); leave "
                "bad rows out of mask."
            )
        return type(self)(self.images[torch.from_numpy(mask)], [], self.prep)

    @classmethod
    def decode(cls, paths, prep, *, max_bytes=None, num_workers=0, batch_size=32,
               max_image_pixels=None, progress=None):
        """Decode ``paths`` once, in parallel if ``num_workers > 0``.

        Parameters
        ----------
        paths : sequence of str
            Image files, as validated by ``check_image_paths``.
        prep : Preprocessing
            ``resize_size`` and ``interpolation`` set the stored square.
        max_bytes : int or None, default=None
            Refuse, before allocating anything, when the images would need
            more bytes than this.
        num_workers : int, default=0
            DataLoader worker processes decoding files; 0 decodes here, as
            does a daemonic process (which may not start workers).
        batch_size : int, default=32
            Images each worker hands back at once.
        max_image_pixels : int or None, default=None
            Passed to ``load_rgb_image``.
        progress : callable or None, default=None
            Called with the number of files done after each batch.

        Raises
        ------
        DecodedImagesTooLargeError
            When ``max_bytes`` is exceeded.
        """
        n_bytes = decoded_nbytes(len(paths), prep)
        if max_bytes is not None and n_bytes > max_bytes:
            raise DecodedImagesTooLargeError(
                n_bytes, max_bytes, len(paths), prep.resize_size
            )
        s = prep.resize_size
        images = torch.zeros((len(paths), prep.channels, s, s), dtype=torch.uint8)
        dataset = ImageDataset(
            paths, store_transform(prep), max_image_pixels=max_image_pixels,
            min_side=s, intensity=prep.intensity,
        )
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=usable_num_workers(num_workers),
            collate_fn=collate_with_errors,
        )
        errors = []
        # Iterating a DataLoader draws from torch's global RNG; decoding must
        # not shift the shuffling and augmentation that follow it.
        with torch.random.fork_rng(devices=[]):
            for batch, indices, failed in loader:
                if batch is not None:
                    images[indices] = batch
                errors.extend(failed)
                if progress is not None:
                    progress(len(indices) + len(failed))
        errors.sort()
        return cls(images, errors, prep)

    def dataset(self, indices=None, targets=None, *, transform=None,
                sample_weight=None):
        """A torch Dataset over rows ``indices``, with ``transform`` per item.

        Parameters
        ----------
        indices : array-like of int or None, default=None
            Rows to use, all if None. Rows of bad files are refused.
        targets : array-like or None, default=None
            One per row of ``self`` (indexed like ``images``, not like
            ``indices``). None gives the row index as target.
        transform : callable or None, default=None
            Maps a stored ``uint8`` image to the model's input, e.g. from
            ``resolve_policy`` or ``tta_views``. None yields the raw tensor.
        sample_weight : array-like or None, default=None
            One per row of ``self``; items then are
            ``({"X": image, "sample_weight": w}, target)``, as
            ``sktransfer._data.with_sample_weight`` makes them.
        """
        if indices is None:
            indices = np.arange(len(self))
        indices = np.asarray(indices, dtype=np.int64)
        bad = sorted(set(indices.tolist()) & {i for i, _ in self.errors})
        if bad:
            reasons = dict(self.errors)
            listed = "; ".join(f"{i}: {reasons[i]}" for i in bad[:5])
            raise ValueError(
                f"{len(bad)} requested image(s) could not be decoded ({listed}). "
                "Leave them out of indices."
            )
        return DecodedDataset(self.images, indices, targets, transform,
                              sample_weight)


class DecodedDataset(Dataset):
    """Items of a :class:`DecodedImages`: ``(image, target)``.

    With ``sample_weight``, items are ``({"X": image, "sample_weight": w},
    target)``. ``__getitems__`` serves a whole batch with one indexing of the
    store (used by ``DataLoader`` since torch 2.2); each image still gets its
    own random draw of the transform.
    """

    def __init__(self, images, indices, targets, transform, sample_weight):
        self.images = images
        self.indices = indices
        self.targets = targets
        self.transform = transform
        self.sample_weight = sample_weight

    def __len__(self):
        return len(self.indices)

    def _target(self, row):
        return row if self.targets is None else self.targets[row]

    def _item(self, row, image):
        if self.transform is not None:
            image = self.transform(image)
        target = self._target(row)
        if self.sample_weight is None:
            return image, target
        return {"X": image, "sample_weight": self.sample_weight[row]}, target

    def __getitem__(self, i):
        row = int(self.indices[i])
        # A copy: an in-place user transform must not write into the store
        # (the batch path's advanced indexing copies already).
        return self._item(row, self.images[row].clone())

    def __getitems__(self, items):
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        batch = self.images[torch.from_numpy(rows)]
        return [self._item(int(row), image) for row, image in zip(rows, batch)]
