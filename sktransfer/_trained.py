"""What the classifier and the regressor share: a trained head on a backbone.

:class:`TrainedTransferBase` holds the training parameters' constraints, the
model building, the fit orchestration (targets, images, the feature cache,
bad images, warm starts, then :func:`~sktransfer._recipe.train_transfer_model`),
running the trained part for prediction and :meth:`transform`, and the safe
format. What differs per kind of target is left to a few methods of the
subclass: checking, fitting and encoding ``y``, the head's width and the
task (:mod:`sktransfer._tasks`) that training and prediction follow.
"""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._augment import AUGMENT_CONSTRAINT, TTA_CONSTRAINT, tta_views
from ._base import TransferEstimatorBase
from ._compat import Interval, StrOptions, check_sample_weight
from ._frozen import find_bad_images, map_features, map_views, training_features
from ._images import BadImagesError, warn_skipped
from ._module import build_transfer_module, frozen_prefix
from ._recipe import Recipe, run_in_batches, train_transfer_model
from ._runtime import limit_threads_in_worker, seeded, torch_seed
from ._sources import check_images
from ._spill import take_rows
from ._train_inputs import TrainingImages, decode_training_images
from ._training import OPTIMIZERS, optimizer_snapshot
from ._warnings import user_stacklevel

__all__ = ["TrainedTransferBase"]


class TrainedTransferBase(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, TransferEstimatorBase
):
    """A backbone with a trained head; not part of the public API.

    A transformer too: :meth:`transform` gives the head's input, so the
    mixins (and ``set_output``'s wrapping of ``transform``) live here.

    Subclasses implement:

    * ``_check_y(y, n_samples)``: ``y`` checked, in a form that rows can be
      taken from with a boolean mask;
    * ``_fit_targets(y, classes)``: set the fitted attributes that describe
      the targets (``classes_``, a scaling, ...);
    * ``_encode_targets(y)``: ``y`` as the training targets (an ndarray);
      raises when the fitted head cannot take it;
    * ``_n_outputs()``: the width of the head;
    * ``_task(targets=None)``: the task of the fitted targets; with the
      encoded training ``targets``, the loss weights they imply.
    """

    _parameter_constraints = {
        **TransferEstimatorBase._parameter_constraints,
        "unfreeze": [Interval(Integral, 0, None, closed="left"), StrOptions({"all"})],
        "hidden_layer_sizes": [tuple, list],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "head_solver": [StrOptions({"auto", "lbfgs", "epochs"})],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "layer_decay": [Interval(Real, 0, 1, closed="right")],
        "lr_schedule": [StrOptions({"cosine", "constant"})],
        "warmup_fraction": [Interval(Real, 0, 1, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr_ratio": [Interval(Real, 0, None, closed="left")],
        "optimizer": [StrOptions(set(OPTIMIZERS)), type],
        "augment": AUGMENT_CONSTRAINT,
        "augment_views": [Interval(Integral, 1, None, closed="left"), None],
        "tta": TTA_CONSTRAINT,
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "cache_max_gb": [Interval(Real, 0, None, closed="neither")],
        "batchnorm": [StrOptions({"auto", "frozen", "train"})],
        "compile": ["boolean"],
        "on_bad_image": [StrOptions({"raise", "skip"})],
        "net_params": [dict, None],
        "warm_start": ["boolean"],
    }

    # Names starting with "_" are kept in pickles but not in save() files.
    _fitted_values = (
        *TransferEstimatorBase._fitted_values,
        "history_", "skipped_images_", "n_train_images_", "interrupted_",
        "batch_size_", "n_features_out_", "_optimizer_state",
    )  # fmt: skip
    _module_attributes = ("model_",)

    # -- building ---------------------------------------------------------

    def _n_unfrozen(self, n_blocks):
        if self.unfreeze == "all":
            return n_blocks
        if self.unfreeze > n_blocks:
            raise ValueError(
                f"unfreeze={self.unfreeze} is larger than the {n_blocks} blocks of "
                f"backbone {self.backbone!r}. Use an int from 0 to {n_blocks}, or "
                "'all'."
            )
        return self.unfreeze

    def _freeze_bn_stats(self):
        if self.batchnorm == "auto":
            return self.weights is not None
        return self.batchnorm == "frozen"

    def _architecture(self, attr, parts):
        """The transfer module on ``parts``, cut where the fit cut it."""
        return build_transfer_module(
            parts,
            self.backbone_n_blocks_ - self.n_frozen_blocks_,
            self._n_outputs(),
            hidden_layer_sizes=tuple(self.hidden_layer_sizes),
            dropout=self.dropout,
            freeze_bn_stats=self._freeze_bn_stats(),
            frozen_dtype=self.frozen_dtype_,
        )

    def _build_backbone(self):
        """Build and record the backbone as a fresh fit does; returns its parts.

        Call it seeded: random weights come from the RNG.
        """
        spec, parts = self._backbone_parts(self.weights)
        n_frozen = spec.n_blocks - self._n_unfrozen(spec.n_blocks)
        self._record_backbone(spec, parts, n_frozen)
        return parts

    def _build_model(self, seed):
        """Build backbone and head as a fresh fit does, seeded with ``seed``."""
        with seeded(seed, self.device_):
            parts = self._build_backbone()
            module = self._architecture("model_", parts)
        widths = (parts.feature_dim, *self.hidden_layer_sizes)
        self.n_features_out_ = int(widths[-1])
        return self._place_module(module)

    def _fit_frozen_pass(self):
        """The frozen pass a fresh :meth:`fit` would run, built without ``y``.

        The same backbone, seed, prefix, preprocessing and precision, hence
        the same feature-cache key: what it stores, ``fit`` finds.
        """
        self._setup_runtime()
        self.torch_seed_ = seed = torch_seed(self.random_state)
        with seeded(seed, self.device_):
            parts = self._build_backbone()
        prefix = frozen_prefix(parts, self.n_frozen_blocks_)
        return self._frozen_pass(self._place_module(prefix))

    # -- fitting ----------------------------------------------------------

    def _usable(self, paths, errors):
        """Boolean mask of usable images, applying ``on_bad_image``."""
        keep = np.ones(len(paths), dtype=bool)
        if not errors:
            return keep
        bad = [(paths.label(i), reason) for i, reason in errors]
        if self.on_bad_image == "raise" or len(errors) == len(paths):
            raise BadImagesError(
                bad,
                "fix or remove them, or pass on_bad_image='skip' to train "
                "without them",
            )
        warn_skipped(bad, len(paths))
        keep[[i for i, _ in errors]] = False
        self.skipped_images_ = bad
        return keep

    @property
    def _n_features_out(self):
        # Read by ClassNamePrefixFeaturesOutMixin.get_feature_names_out.
        return self.n_features_out_

    def _uses_feature_cache(self):
        return self.cache is not False and not self.augment

    def _fit(self, X, y, sample_weight, *, warm, max_epochs, classes=None,
             continued=False):
        paths = check_images(X)
        y = self._check_y(y, len(paths))
        limit_threads_in_worker()
        if sample_weight is not None:
            sample_weight = check_sample_weight(
                sample_weight, paths, ensure_non_negative=True
            )
        history = None
        if warm:
            self._encode_targets(y)
            # A loaded model whose file held no history starts a new one.
            history = getattr(self, "history_", None)
            seed = self._continued_seed(history)
        else:
            self._optimizer_state = None
            self._setup_runtime()
            self.torch_seed_ = seed = torch_seed(self.random_state)
            # Targets are fitted before images are checked so the head can be
            # built; they are fitted again if bad images are skipped.
            self._fit_targets(y, classes)
            self._encode_targets(y)
        self.skipped_images_ = []
        self.interrupted_ = False
        if not warm:
            self.model_ = self._build_model(seed)
        frozen_pass = self._frozen_pass(self.model_.frozen)
        features, errors, decoded = None, None, None
        if self._uses_feature_cache():
            features, errors = training_features(
                frozen_pass, paths, max_gb=self.cache_max_gb
            )
        elif self.augment is not False:
            decoded = decode_training_images(
                paths, self.preprocessing_, max_gb=self.cache_max_gb,
                num_workers=Recipe.of(self).loader_workers(len(paths)),
                max_image_pixels=self.max_image_pixels,
            )
            errors = None if decoded is None else decoded.errors
        if errors is None:  # nothing decoded up front
            errors = find_bad_images(frozen_pass, paths)
        keep = self._usable(paths, errors)
        if decoded is not None:
            decoded = decoded.take(keep)
        paths, y = paths[keep], y[keep]
        if sample_weight is not None:
            sample_weight = sample_weight[keep]
        if features is not None:
            features = take_rows(features, keep)
        if not (warm or classes is not None or keep.all()):
            self._refit_targets(y)
        targets = self._encode_targets(y)
        self.n_train_images_ = len(paths)
        # Training is seeded on its own, so whether features came from the
        # cache (no loader, no random draws) does not change the result.
        images = TrainingImages(
            paths, self.preprocessing_, self.augment, decoded,
            self.max_image_pixels,
        )
        recipe = Recipe.of(self, max_epochs=max_epochs)
        with seeded(seed, self.device_):
            if self.augment_views is not None and self.augment is not False:
                images = images.with_view_features(
                    frozen_pass, self.augment_views, max_gb=self.cache_max_gb,
                    num_workers=recipe.loader_workers(len(paths)),
                )
            result = train_transfer_model(
                self.model_, recipe, self._task(targets), images=images,
                features=features, frozen_pass=frozen_pass, targets=targets,
                sample_weight=sample_weight, device=self.device_,
                autocast_dtype=self._training_autocast_dtype(),
                split_seed=self.torch_seed_, seed=seed,
                probe=not warm and not continued and recipe.probes_head,
                history=history,
                optimizer_state=getattr(self, "_optimizer_state", None),
            )
        net, interrupted = result.net, result.interrupted
        self.history_, self.batch_size_ = result.history, result.batch_size
        # Kept only when a later fit may continue this one: Adam's moments
        # are twice the size of the trained weights.
        self._optimizer_state = (
            optimizer_snapshot(net.optimizer_)
            if net is not None and (continued or self.warm_start) else None
        )
        self.model_.eval()
        for param in self.model_.parameters():
            param.grad = None  # a fitted model holds no gradients
        if interrupted:
            self.interrupted_ = True
            warnings.warn(
                f"Training was interrupted after {len(self.history_)} epoch(s); "
                "the model keeps the weights reached so far.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
            raise KeyboardInterrupt
        return self

    def _refit_targets(self, y):
        """Fit the targets again on the images left after skipping bad ones."""
        width = self._n_outputs()
        self._fit_targets(y, None)
        if self._n_outputs() != width:
            # Skipping bad images removed a whole class: rebuild the head.
            self.model_ = self._build_model(self.torch_seed_)

    def _continued_seed(self, history):
        # A different, still reproducible, shuffle for each continued fit;
        # torch_seed_ itself stays, as the feature cache key depends on it.
        seed = getattr(self, "torch_seed_", None)
        if seed is None:
            return None
        return (seed + len(history or ())) % np.iinfo(np.int32).max

    def plot_history(self, ax=None):
        """Plot training loss, validation loss and accuracy per epoch.

        Needs matplotlib (``pip install "sktransfer[plot]"``).

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Where to draw; ``None`` makes a new figure.

        Returns
        -------
        ax : matplotlib Axes
            The axes holding the loss curves.
        """
        check_is_fitted(self)
        from ._plotting import plot_history

        return plot_history(self.history_, ax=ax)

    # -- safe persistence ---------------------------------------------------

    def save(self, path, *, include_backbone=True):
        """Save the fitted model to a directory, without pickle.

        Writes ``model.safetensors`` (tensors only) and ``manifest.json``
        (parameters, fitted attributes such as ``classes_`` and their dtype,
        backbone and weights identity, preprocessing, library versions and
        checksums). Parameters with no JSON form (callables,
        ``joblib.Memory``, skorch callbacks in ``net_params``) are not saved:
        they only matter for training, and are listed under
        ``params_not_saved``.

        Parameters
        ----------
        path : str or path-like
            Directory to write (created if needed).
        include_backbone : bool, default=True
            Store the frozen backbone's tensors too. ``False`` stores only the
            trained part and a SHA-256 of the frozen tensors; :meth:`load`
            then rebuilds the backbone from its weights and checks it.

        Returns
        -------
        path : pathlib.Path
            The directory written.

        Examples
        --------
        >>> clf.save("my_model")  # doctest: +SKIP
        >>> PretrainedCNNClassifier.load("my_model").predict(paths)  # doctest: +SKIP
        """
        from .io import save_model

        return save_model(self, path, include_backbone=include_backbone)

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save`; nothing is unpickled.

        Parameters
        ----------
        path : str or path-like
            Directory written by :meth:`save`.

        Returns
        -------
        estimator : estimator of this class
            The fitted model, on ``device`` (the CPU when it was saved on a
            GPU and none is available).

        Raises
        ------
        sktransfer.ModelFileError
            When a file is missing, not what it claims, holds another kind of
            estimator, or was changed after saving.
        """
        from .io import load_model

        return load_model(cls, path)

    # -- prediction -------------------------------------------------------

    def _run_suffix(self, features, fn):
        return run_in_batches(
            fn, features, batch_size=getattr(self, "batch_size_", self.batch_size),
            device=self.device_, autocast_dtype=self._training_autocast_dtype(),
        )

    def _training_autocast_dtype(self):
        """Mixed precision of the trained part: the frozen dtype on CUDA only."""
        return self.frozen_dtype_ if torch.device(self.device_).type == "cuda" else None

    def _predicted_outputs(self, X):
        """The task's outputs for ``X`` (probabilities or values), float64,
        averaged over the test-time views of ``tta``."""
        check_is_fitted(self)
        self.model_.eval()
        task = self._task()
        frozen_pass = self._frozen_pass(self.model_.frozen)

        def scores(features):
            return self._run_suffix(features, self.model_.suffix)

        if self.tta is not False:
            views = tta_views(self.tta, self.preprocessing_)
            mean = map_views(
                frozen_pass, X, views, lambda f: task.view_outputs(scores(f)),
                output=task.views_output,
            )
            return task.mean_of_views(mean).numpy()
        return task.outputs(map_features(frozen_pass, X, scores)).numpy()

    def transform(self, X):
        """Penultimate features of the fitted network (the head's input).

        With a linear head this is the pooled backbone embedding (fine-tuned
        blocks included); with hidden layers, the last hidden layer. Like any
        scikit-learn transformer, the output container follows
        :meth:`set_output` (e.g. ``set_output(transform="pandas")``).

        Parameters
        ----------
        X : array-like of shape (n_samples,)
            Image file paths.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        self.model_.eval()
        return map_features(
            self._frozen_pass(self.model_.frozen), X,
            lambda features: self._run_suffix(features, self.model_.suffix.embed),
        ).numpy()
