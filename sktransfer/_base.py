"""What the classifier and the feature extractor share: parameters for the
backbone, images, device, precision and cache; building the backbone; the
frozen feature pass; and the fitted state that persistence stores."""

import copy
import dataclasses
import os
import warnings
from numbers import Integral

import torch
from joblib import Memory
from sklearn.base import BaseEstimator

from ._cache import stores_for
from ._channels import CHANNELS_CONSTRAINT, adapt_stem_to_grey
from ._compat import Interval, StrOptions
from ._frozen import FrozenPass, frozen_cache_key
from ._intensity import INTENSITY_CONSTRAINT, check_intensity
from ._runtime import device_unavailable_reason, resolve_device, resolve_precision
from ._warnings import user_stacklevel
from .backbones import get_backbone
from .io import PickleSupportMixin

__all__ = ["TransferEstimatorBase"]


class TransferEstimatorBase(PickleSupportMixin, BaseEstimator):
    """Shared machinery; not part of the public API.

    Subclasses list their fitted attributes in ``_fitted_values`` (plain
    values) and ``_module_attributes`` (torch modules), and build a module's
    architecture in ``_architecture(attr, parts)``. Those lists are the only
    record of what a fitted estimator holds: pickling and the safe format
    both go through :meth:`_fitted_state` and :meth:`_restore_fitted_state`.
    """

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
        "intensity": INTENSITY_CONSTRAINT,
        "channels": CHANNELS_CONSTRAINT,
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    _fitted_values = (
        "device_", "weights_id_", "torch_seed_", "backbone_n_blocks_",
        "n_frozen_blocks_", "preprocessing_",
    )  # fmt: skip
    _module_attributes = ()

    # -- parameters that are objects ---------------------------------------
    # torchvision transforms (an ``augment`` value) have a static
    # ``get_params`` that samples random parameters, which scikit-learn would
    # mistake for an estimator's: ``get_params(deep=True)`` and ``clone``
    # would call it and fail. Only scikit-learn estimators are nested here,
    # and other objects are cloned as copies.

    def get_params(self, deep=True):
        """Get parameters for this estimator.

        Parameters
        ----------
        deep : bool, default=True
            Also return the parameters of parameter values that are
            scikit-learn estimators, as ``name__param``.

        Returns
        -------
        params : dict
            Parameter names mapped to their values.
        """
        params = super().get_params(deep=False)
        if deep:
            for key, value in list(params.items()):
                if isinstance(value, BaseEstimator):
                    params.update(
                        (f"{key}__{k}", v) for k, v in value.get_params().items()
                    )
        return params

    def __sklearn_clone__(self):
        foreign = {
            key: value for key, value in self.get_params(deep=False).items()
            if hasattr(value, "get_params") and not isinstance(value, type)
            and not isinstance(value, BaseEstimator)
        }
        if not foreign:
            return super().__sklearn_clone__()
        masked = copy.copy(self)
        for key in foreign:
            setattr(masked, key, None)
        clone = BaseEstimator.__sklearn_clone__(masked)
        for key, value in foreign.items():
            setattr(clone, key, copy.deepcopy(value))
        return clone

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.input_tags.three_d_array = True  # stacked images (n, h, w[, c])
        tags.non_deterministic = True  # unless random_state is set
        return tags

    # -- building -----------------------------------------------------------

    def _backbone_parts(self, weights):
        """Build the backbone with ``weights``; returns ``(spec, parts)``."""
        spec = get_backbone(self.backbone)
        parts = spec.build(weights)
        # Older pickles have no ``channels``: they were RGB.
        if getattr(self, "channels", "rgb") == "grey":
            parts.preprocessing = adapt_stem_to_grey(
                parts.blocks[0], parts.preprocessing, repr(self.backbone)
            )
        return spec, parts

    def _record_backbone(self, spec, parts, n_frozen_blocks):
        """Set the fitted attributes that the backbone just built determines."""
        self.backbone_n_blocks_ = spec.n_blocks
        self.n_frozen_blocks_ = n_frozen_blocks
        self.preprocessing_ = dataclasses.replace(
            parts.preprocessing.with_image_size(self.image_size),
            intensity=check_intensity(self.intensity, type(self).__name__),
        )
        self.weights_id_ = parts.weights_id

    def _place_module(self, module):
        """Move ``module`` to ``device_`` in channels-last layout (faster convs)."""
        return module.to(self.device_, memory_format=torch.channels_last)

    # -- runtime ------------------------------------------------------------

    def _setup_runtime(self):
        self.device_ = resolve_device(self.device, type(self).__name__)
        self._setup_precision()

    def _setup_precision(self):
        self.frozen_dtype_ = resolve_precision(self.precision, self.device_)

    def _restore_device(self):
        """Move to the best device here when the fitted one is missing.

        A model fitted on ``cuda:3`` loads on a machine with fewer GPUs (on
        the device ``"auto"`` picks there: a Dask worker's own GPU, say),
        and one fitted on a GPU loads on a CPU-only machine.
        """
        device = getattr(self, "device_", "cpu")
        reason = device_unavailable_reason(device)
        if reason is not None:
            self.device_ = resolve_device("auto")
            where = "the CPU" if self.device_ == "cpu" else repr(self.device_)
            warnings.warn(
                f"This model was fitted on {device!r} but {reason}; loading it "
                f"on {where}.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        self._setup_precision()

    # -- fitted state -------------------------------------------------------

    def _fitted_state(self):
        """The fitted state as ``(values, modules)``.

        ``values`` maps each fitted attribute in ``_fitted_values`` that is
        set to its value; ``modules`` maps each module attribute to its
        ``state_dict`` on the CPU.
        """
        values = {
            name: getattr(self, name)
            for name in self._fitted_values if hasattr(self, name)
        }
        modules = {
            attr: {k: v.detach().cpu() for k, v in module.state_dict().items()}
            for attr in self._module_attributes
            if (module := getattr(self, attr, None)) is not None
        }
        return values, modules

    def _restore_fitted_state(self, values, modules, *, parts=None):
        """Set the fitted state returned by :meth:`_fitted_state`.

        Module architectures are rebuilt from ``parts`` (a built backbone),
        by default the backbone with random weights, which downloads
        nothing; the saved state dicts then provide every weight. With
        ``parts`` built from real weights, a state dict may leave out what
        those weights provide.

        Returns
        -------
        incompatible : dict
            ``attr -> (missing_keys, unexpected_keys)`` of each module, for a
            caller that passed ``parts`` to check.
        """
        for name, value in values.items():
            setattr(self, name, value)
        self._restore_device()
        strict = parts is None
        if strict and modules:
            _, parts = self._backbone_parts(None)
        incompatible = {}
        for attr, state in modules.items():
            module = self._architecture(attr, parts)
            incompatible[attr] = module.load_state_dict(state, strict=strict)
            setattr(self, attr, self._place_module(module).eval())
        return incompatible

    # -- the frozen pass ----------------------------------------------------

    def _feature_cache_key(self, module=None):
        """Cache key of ``module``, the fitted frozen prefix, each time anew.

        ``module`` defaults to this estimator's frozen prefix (``frozen_``
        of the extractor, ``model_.frozen`` of the classifier).

        It comes from the fitted prefix (its architecture and the identity
        of its weights) rather than from the constructor parameters, and
        follows any change of precision (e.g. a GPU model loaded on a CPU).
        """
        if module is None:
            module = getattr(self, "frozen_", None)
            if module is None:
                module = self.model_.frozen
        return frozen_cache_key(
            module,
            weights_id=self.weights_id_,
            seed=self.torch_seed_,
            preprocessing=self.preprocessing_,
            dtype=self.frozen_dtype_,
        )

    def _frozen_pass(self, module):
        """How ``module`` (the frozen prefix) runs over images, cache included."""
        return FrozenPass(
            module=module,
            preprocessing=self.preprocessing_,
            device=self.device_,
            dtype=self.frozen_dtype_,
            batch_size=self._inference_batch_size(),
            num_workers=self.num_workers,
            max_image_pixels=self.max_image_pixels,
            cache_key=self._feature_cache_key(module),
            stores=tuple(stores_for(self.cache)),
            verbose=self.verbose,
        )

    def _inference_batch_size(self):
        return self.inference_batch_size or 2 * self.batch_size

