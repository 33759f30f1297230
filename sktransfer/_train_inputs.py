"""What the training loop iterates over when the frozen part runs each step.

With cached features, training reads rows of a tensor (``tensor_dataset``).
Without them the network sees images, and where those come from depends on
the fit:

* with an augmentation policy, every image is decoded once into a bounded
  ``uint8`` store (:class:`~sktransfer._decoded.DecodedImages`) and each
  epoch draws new random views of the stored squares, so files are read once
  per fit, not once per epoch;
* with ``augment_views=K``, the frozen part runs once on each of K random
  views of every stored image (and on its evaluation view); every epoch then
  trains on one of those K feature rows per image, drawn at random, so the
  frozen part costs K passes instead of one per epoch;
* when that store would exceed its memory bound, or without augmentation,
  files are read every epoch, through the same steps (store resize, then the
  policy), so both give the same distribution of inputs.
"""

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ._augment import resolve_policy, tta_views
from ._data import ImageDataset, tensor_dataset, with_sample_weight
from ._decoded import DecodedImages, DecodedImagesTooLargeError, store_transform
from ._frozen import FeatureCacheTooLarge, view_features
from ._transforms import eval_transform
from ._warnings import user_stacklevel

__all__ = ["TrainingImages", "decode_training_images"]


def decode_training_images(paths, prep, *, max_gb, num_workers, max_image_pixels):
    """Decode ``paths`` into memory for augmented training, or None.

    Returns None, with a warning, when the store would take more than
    ``max_gb`` GiB; training then reads the files every epoch.
    """
    try:
        return DecodedImages.decode(
            paths, prep, max_bytes=int(max_gb * 1024**3), num_workers=num_workers,
            max_image_pixels=max_image_pixels,
        )
    except DecodedImagesTooLargeError as exc:
        warnings.warn(
            f"{exc} Training reads the image files every epoch instead, which "
            f"is slower. If the memory is available, raise cache_max_gb to at "
            f"least {exc.n_bytes / 1024**3:.3g}.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        return None


@dataclass
class TrainingImages:
    """Training images and how each split turns them into network inputs.

    Parameters
    ----------
    paths : ndarray of str
        The usable training images.
    prep : Preprocessing
        The backbone's preprocessing.
    augment : bool, str or callable
        The estimator's ``augment`` parameter.
    decoded : DecodedImages or None
        ``paths`` decoded (rows aligned with ``paths``, no bad rows), or None
        to read the files each epoch.
    max_image_pixels : int or None
        Decompression-bomb guard when reading files.
    views : torch.Tensor or None
        Frozen features of random views, shape ``(K, n_images, ...)``, set by
        :meth:`with_view_features`.
    centre : torch.Tensor or None
        Frozen features of the evaluation view, shape ``(n_images, ...)``,
        set with ``views``.
    """

    paths: object
    prep: object
    augment: object
    decoded: object = None
    max_image_pixels: object = None
    views: object = None
    centre: object = None

    def with_view_features(self, frozen_pass, n_views, *, max_gb, num_workers):
        """These images with the frozen features of ``n_views`` random views.

        Returns ``self`` unchanged, with a warning, when the features would
        take more than ``max_gb`` GiB (the frozen part then runs every
        epoch), or when the images are not held in memory.
        """
        if self.decoded is None:
            return self
        policy = resolve_policy(self.augment, self.prep)
        centre = tta_views(False, self.prep)[0]
        try:
            features = view_features(
                frozen_pass, self.decoded, [centre] + [policy] * n_views,
                max_bytes=int(max_gb * 1024**3), num_workers=num_workers,
            )
        except FeatureCacheTooLarge as exc:
            warnings.warn(
                f"{exc} augment_views={n_views} is ignored: the frozen part runs "
                f"on every augmented batch instead. Raise cache_max_gb to at "
                f"least {exc.n_bytes / 1024**3:.3g}, or lower augment_views.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
            return self
        return dataclasses.replace(self, views=features[1:], centre=features[0])

    def _file_dataset(self, idx, transform, targets):
        return ImageDataset(
            self.paths[idx], transform, targets=targets[idx],
            max_image_pixels=self.max_image_pixels,
            min_side=self.prep.resize_size, intensity=self.prep.intensity,
        )

    def datasets(self, train_idx, valid_idx, targets, weights):
        """``(train, valid)`` datasets; ``valid`` is None without ``valid_idx``.

        The policy applies to the training rows only; validation images get
        the deterministic evaluation view.
        """
        if self.views is not None:
            train = _RandomViewRows(self.views, targets, weights, train_idx)
            valid = None if valid_idx is None else tensor_dataset(
                self.centre, targets, weights, valid_idx
            )
            return train, valid
        policy = resolve_policy(self.augment, self.prep)
        if self.decoded is not None:
            centre = tta_views(False, self.prep)[0]
            train = self.decoded.dataset(
                train_idx, targets, transform=policy or centre, sample_weight=weights
            )
            valid = None if valid_idx is None else self.decoded.dataset(
                valid_idx, targets, transform=centre, sample_weight=weights
            )
            return train, valid
        evaluation = eval_transform(self.prep)
        augmenting = (
            evaluation if policy is None
            else v2.Compose([store_transform(self.prep), policy])
        )
        sets = []
        for idx, transform in ((train_idx, augmenting), (valid_idx, evaluation)):
            if idx is None:
                sets.append(None)
                continue
            sets.append(with_sample_weight(
                self._file_dataset(idx, transform, targets),
                None if weights is None else weights[idx],
            ))
        return tuple(sets)


class _RandomViewRows(Dataset):
    """Training rows of precomputed view features, one random view per item.

    Views are drawn from torch's global generator, which the fit seeds, so
    a seeded fit draws the same views.
    """

    def __init__(self, views, targets, weights, indices):
        self.views = views
        self.targets = targets
        self.weights = weights
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self):
        return len(self.indices)

    def _item(self, row, x):
        target = self.targets[row]
        if self.weights is None:
            return x, target
        return {"X": x, "sample_weight": self.weights[row]}, target

    def __getitem__(self, i):
        return self.__getitems__([i])[0]

    def __getitems__(self, items):
        rows = torch.from_numpy(self.indices[np.asarray(items, dtype=np.int64)])
        picks = torch.randint(len(self.views), (len(rows),))
        batch = self.views[picks, rows]
        return [self._item(int(r), x) for r, x in zip(rows, batch)]
