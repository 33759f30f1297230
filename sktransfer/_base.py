"""What the classifier and the feature extractor share: parameters for the
backbone, images, device, precision and cache, and the frozen feature pass."""

import os
import sys
import warnings
from numbers import Integral

import numpy as np
import torch
from joblib import Memory
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from ._backbones import get_backbone
from ._cache import model_cache_key, stores_for
from ._data import check_image_paths, format_bad_images
from ._features import extract_features, find_bad_images
from ._images import ImageLoadError
from ._persistence import VersionStampMixin
from ._transforms import eval_transform
from ._warnings import user_stacklevel

# Images per prediction chunk: bounds the frozen features held at once
# (about 0.8 GB for resnet50 at unfreeze=1) while keeping loader start-up rare.
_PREDICT_CHUNK = 1024
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class BadImagesError(ImageLoadError):
    """Several image files cannot be used; ``errors`` lists (path, reason)."""

    def __init__(self, errors, action):
        self.errors = errors
        message = (
            f"{len(errors)} image file(s) cannot be used; {action}:\n"
            f"{format_bad_images(errors)}"
        )
        ValueError.__init__(self, message)
        self.path = errors[0][0]
        self.reason = message


def _dask_worker_rank():
    """Rank of the Dask worker running this code, or None outside one.

    ``distributed`` is only consulted if something already imported it, so
    plain use never pays for importing Dask.
    """
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    name = worker.name
    try:
        return int(name)  # LocalCluster and dask-jobqueue name workers 0, 1, ...
    except (TypeError, ValueError):
        # Named workers: a stable number from the name, so a worker keeps
        # its GPU across tasks.
        return sum(str(name).encode())


def resolve_device(device):
    """``"auto"`` picks CUDA when available; other values pass through.

    Inside a Dask worker on a host with several visible GPUs, ``"auto"``
    spreads workers over them: ``cuda:{rank % n_gpus}``. Restricting a worker
    with ``CUDA_VISIBLE_DEVICES`` leaves it one visible GPU, which it uses.
    """
    if device != "auto":
        return str(device)
    if not torch.cuda.is_available():
        return "cpu"
    n_gpus = torch.cuda.device_count()
    rank = _dask_worker_rank() if n_gpus > 1 else None
    return "cuda" if rank is None else f"cuda:{rank % n_gpus}"


def cpu_has_fast_bf16():
    """Whether this CPU runs bf16 matrix work natively (AVX-512 BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision, device):
    """The autocast dtype for frozen forward passes, or None for float32."""
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if precision == "fp16" and kind != "cuda":
        raise ValueError(
            "precision='fp16' needs a CUDA device; on the CPU use 'bf16', "
            "'fp32' or 'auto'."
        )
    return _PRECISIONS[precision]


def torch_seed(random_state):
    """An int seed for torch from a sklearn ``random_state``, or None."""
    if random_state is None:
        return None
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


class TransferEstimatorBase(VersionStampMixin, BaseEstimator):
    """Shared machinery; not part of the public API."""

    _parameter_constraints = {
        "backbone": [str],
        "weights": [str, os.PathLike, None],
        "image_size": [Interval(Integral, 16, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "inference_batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "cache": [StrOptions({"auto"}), "boolean", str, os.PathLike, Memory],
        "precision": [StrOptions({"auto", "fp32", "bf16", "fp16"})],
        "device": [str],
        "num_workers": [Interval(Integral, 0, None, closed="left"), None],
        "max_image_pixels": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.non_deterministic = True  # unless random_state is set
        return tags

    def _build_backbone(self, weights, *, restoring=False):
        """Build the backbone; set the fitted attributes it determines.

        ``restoring=True`` (loading a saved model) builds the architecture
        only and keeps the fitted ``preprocessing_`` and ``weights_id_``: the
        randomly initialised stand-in must not replace those of the weights
        the model was fitted with.
        """
        spec = get_backbone(self.backbone)
        parts = spec.build(weights)
        if not restoring:
            self.backbone_n_blocks_ = spec.n_blocks
            self.preprocessing_ = parts.preprocessing.with_image_size(self.image_size)
            self.weights_id_ = parts.weights_id
        return spec, parts

    def _place_module(self, module):
        """Move ``module`` to ``device_`` in channels-last layout (faster convs)."""
        return module.to(self.device_, memory_format=torch.channels_last)

    def _setup_runtime(self):
        self.device_ = resolve_device(self.device)
        self._setup_precision()

    def _setup_precision(self):
        self.frozen_dtype_ = resolve_precision(self.precision, self.device_)

    def _feature_cache_key(self):
        """Cache key of the frozen prefix, or None when it is not reproducible.

        Computed from fitted attributes each time, so it follows any change of
        device or precision (e.g. a GPU model loaded on a CPU).
        """
        seed = self.torch_seed_
        if self.weights_id_ == "random" and seed is None:
            return None  # a random backbone without a seed is never seen again
        return model_cache_key(
            backbone=self.backbone,
            weights=self.weights_id_,
            seed=seed if self.weights_id_ == "random" else None,
            n_frozen_blocks=self.n_frozen_blocks_,
            pooled=self.n_frozen_blocks_ == self.backbone_n_blocks_,
            preprocessing=self.preprocessing_.to_dict(),
            dtype=str(self.frozen_dtype_),
        )

    def _frozen_features(self, paths, frozen, *, batch_size, use_cache=True,
                         max_bytes=None):
        """Frozen-prefix outputs for ``paths`` and the load errors found.

        Raises ``FeatureCacheTooLarge`` if they would take more than
        ``max_bytes``.
        """
        return extract_features(
            frozen,
            paths,
            transform=eval_transform(self.preprocessing_),
            min_side=self.preprocessing_.resize_size,
            max_image_pixels=self.max_image_pixels,
            batch_size=batch_size,
            device=self.device_,
            dtype=self.frozen_dtype_,
            num_workers=self.num_workers,
            model_key=self._feature_cache_key() if use_cache else None,
            stores=stores_for(self.cache),
            max_bytes=max_bytes,
            verbose=self.verbose,
        )

    def _find_bad_images(self, paths):
        return find_bad_images(
            paths,
            max_image_pixels=self.max_image_pixels,
            min_side=self.preprocessing_.resize_size,
            num_workers=self.num_workers,
            verbose=self.verbose,
        )

    def _inference_batch_size(self):
        return self.inference_batch_size or 2 * self.batch_size

    def _map_features(self, X, frozen, fn):
        """``fn`` of the frozen features of ``X``, one row per input.

        Runs in chunks of ``_PREDICT_CHUNK`` images, so a feature-map prefix
        (``unfreeze>0``) over many images is never held in memory at once.
        Bad files raise, listing every one, after all chunks were read.
        """
        paths = check_image_paths(X)
        outputs, errors = [], []
        for start in range(0, len(paths), _PREDICT_CHUNK):
            features, chunk_errors = self._frozen_features(
                paths[start : start + _PREDICT_CHUNK], frozen,
                batch_size=self._inference_batch_size(),
            )
            errors.extend((paths[start + i], reason) for i, reason in chunk_errors)
            if not errors:
                outputs.append(fn(features))
        if errors:
            raise BadImagesError(
                errors,
                "every input needs an output, so nothing is skipped at predict "
                "time; fix or remove these files",
            )
        return torch.cat(outputs)


def warn_skipped(errors, n_total):
    warnings.warn(
        f"Skipped {len(errors)} of {n_total} images that cannot be used "
        f"(on_bad_image='skip'):\n{format_bad_images(errors)}",
        UserWarning,
        stacklevel=user_stacklevel(),
    )
