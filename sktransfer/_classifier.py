"""The public classifier: a pretrained CNN with a new head, on image paths."""

import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    ClassifierMixin,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils.validation import check_is_fitted

from ._augment import AUGMENT_CONSTRAINT, TTA_CONSTRAINT, tta_views
from ._base import TransferEstimatorBase
from ._compat import Interval, StrOptions, check_sample_weight, fit_context
from ._frozen import find_bad_images, map_features, map_views, training_features
from ._images import BadImagesError, warn_skipped
from ._labels import check_targets, encode_labels, fit_classes
from ._module import build_transfer_module
from ._recipe import Recipe, run_in_batches, train_transfer_model
from ._runtime import limit_threads_in_worker, seeded, torch_seed
from ._sources import check_images
from ._train_inputs import TrainingImages, decode_training_images
from ._training import OPTIMIZERS, optimizer_snapshot
from ._warnings import user_stacklevel

__all__ = ["PretrainedCNNClassifier"]


class PretrainedCNNClassifier(
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    ClassifierMixin,
    TransferEstimatorBase,
):
    """Image classifier from a pretrained CNN backbone and a trainable head.

    ``X`` holds one image per sample: file paths, URLs, PIL images or numpy
    arrays (see "Inputs" in the user guide). The backbone is cut into
    ordered blocks (stem first); the last ``unfreeze`` blocks and a new head
    are trained, the rest stays frozen, BatchNorm statistics included. With
    the frozen part fixed and ``augment=False``, its output is computed once
    per image and cached, so each epoch only runs what is trained.

    Parameters
    ----------
    backbone : str, default="resnet50"
        Registered backbone name (see :func:`sktransfer.list_backbones`), or
        ``"timm/<model_name>"`` for any timm model.
    weights : str, path or None, default="DEFAULT"
        ``"DEFAULT"`` for the recommended pretrained weights, a weights name
        such as ``"IMAGENET1K_V2"``, ``None`` for random initialisation, or
        the path of a local state-dict file (``.pth`` or ``.safetensors``).
    unfreeze : int or "all", default=0
        How many of the backbone's last blocks train: 0 trains only the head
        (feature extraction); ``"all"`` fine-tunes the whole network.
    hidden_layer_sizes : tuple of int, default=()
        Hidden layers of the head; ``()`` is a linear head.
    dropout : float, default=0.0
        Dropout before each layer of the head.
    head_solver : {"auto", "lbfgs", "epochs"}, default="auto"
        How the new head is first fitted. ``"auto"`` is ``"lbfgs"`` with
        ``unfreeze=0`` and ``"epochs"`` otherwise (on the bundled emoji set,
        3-fold CV, ``unfreeze=1``: 0.739 starting from the probed head
        against 0.779 without it). ``"lbfgs"``: to the optimum of its
        L2-penalised loss (strength ``1/C``, as ``LogisticRegression``) by
        full-batch L-BFGS on the pooled embeddings of the training images
        (a linear probe). With ``unfreeze=0`` and ``augment=False`` that is
        the whole fit, so ``max_epochs`` and the optimizer are not used;
        otherwise the epochs of fine-tuning start from the probed head
        (LP-FT). ``"epochs"``: the head trains only in the epoch loop.
    C : float, default=1.0
        Inverse strength of the L2 penalty of the L-BFGS head fit, in the
        sense of ``sklearn.linear_model.LogisticRegression``.
    max_epochs : int, default=10
        Training epochs (fine-tuning, or the head with ``head_solver="epochs"``).
    lr : float, default=1e-3
        Peak learning rate of the head in the epoch loop.
    backbone_lr_ratio : float, default=0.1
        Learning rate of the last unfrozen backbone block, relative to ``lr``.
    layer_decay : float, default=1.0
        Each unfrozen block trains at ``layer_decay`` times the learning rate
        of the block after it (layer-wise learning-rate decay); ``1.0``
        gives every unfrozen block the same rate.
    lr_schedule : {"constant", "cosine"}, default="constant"
        ``"cosine"``: a linear warmup over ``warmup_fraction`` of the
        training steps, then cosine decay to zero, stepped every batch.
    warmup_fraction : float, default=0.1
        Share of the steps spent warming up with ``lr_schedule="cosine"``.
    label_smoothing : float, default=0.0
        Label smoothing of the cross-entropy loss.
    batch_size : int, default=32
        Training batch size. If the device runs out of memory, training
        restarts with half the batch (down to 1) and warns; the size used is
        ``batch_size_``.
    inference_batch_size : int or None, default=None
        Batch size for feature extraction and prediction; ``None`` means
        ``2 * batch_size``.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
        Optimizer; ``"sgd"`` uses momentum 0.9.
    image_size : int or None, default=None
        Side of the square crop fed to the network. ``None`` uses the size
        the weights were trained with; the resize keeps the same ratio.
    augment : bool, {"light", "classic", "trivialaugment"} or callable, \
            default=False
        Random views of the training images (validation and prediction
        images are never augmented). ``True`` is ``"light"``: random resized
        crops covering 70-100 % of the image, and horizontal flips.
        ``"classic"``: rotation up to 20 degrees, shifts up to 10 %, zoom
        0.8-1.2 and flips (the Keras ``ImageDataGenerator`` recipe).
        ``"trivialaugment"``: ``"light"`` then ``TrivialAugmentWide``. A
        callable, such as a ``torchvision.transforms.v2`` transform, receives
        each image as a ``uint8`` tensor ``(3, S, S)`` (the shorter side
        resized to ``S``, the weights' resize size, and centre-cropped) and
        returns a tensor, which is then centre-cropped to the network's input
        size and normalised. Images are decoded once per fit into memory
        (``3 * S**2`` bytes each, within ``cache_max_gb``); the frozen part
        then runs on every augmented batch, since its output changes. In a
        ``GridSearchCV`` grid, wrap a single torchvision transform in
        ``v2.Compose([...])``: scikit-learn copies grid values by calling
        their ``get_params``, which some transforms define for another
        purpose.
    augment_views : int or None, default=None
        With augmentation, ``None`` draws a new view of every image each
        epoch, so the frozen part runs on every augmented batch. An int
        ``K`` instead runs the frozen part once on ``K`` random views of
        each image (plus its evaluation view, for validation and the head
        probe) and trains each epoch on one of them per image, drawn at
        random: the frozen part then costs ``K`` passes instead of
        ``max_epochs``, and the features take ``K + 1`` times the memory of
        the feature cache (within ``cache_max_gb``, else ``fit`` warns and
        uses ``None``).
    tta : bool or {"flip", "crops"}, default=False
        Test-time augmentation in :meth:`predict_proba` (and so
        :meth:`predict` and :meth:`score`): class probabilities averaged over
        several views of each image. ``True`` or ``"flip"``: the image and
        its mirror (2 passes); ``"crops"``: the centre and four corner crops,
        each also mirrored (10 passes). ``transform`` is never augmented.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified,
        seeded by ``random_state``), report its loss and accuracy each
        epoch, stop when its loss has not improved for ``n_iter_no_change``
        epochs, and keep the weights of the best epoch. ``False`` trains on
        everything for ``max_epochs``.
    validation_fraction : float, default=0.1
        Fraction held out for early stopping. Only used if
        ``early_stopping=True``.
    n_iter_no_change : int, default=5
        Epochs without improvement of the validation loss before training
        stops. Only used if ``early_stopping=True``.
    class_weight : "balanced", dict or None, default=None
        Weights of the classes in the loss.
    batchnorm : {"auto", "frozen", "train"}, default="auto"
        BatchNorm layers inside *unfrozen* blocks: ``"frozen"`` keeps their
        pretrained running statistics (their scale and shift still train),
        ``"train"`` updates them. ``"auto"`` is ``"frozen"`` for pretrained
        weights and ``"train"`` for ``weights=None``. Frozen blocks always
        keep theirs.
    cache : "auto", bool, path or joblib.Memory, default="auto"
        Feature cache of the frozen part. ``"auto"``/``True``: in memory,
        shared by fits in this process (CV folds, search candidates).
        A directory or ``joblib.Memory``: also on disk, shared across
        processes and sessions. ``False``: never cache (the frozen part runs
        every epoch).
    cache_max_gb : float, default=4.0
        Bound, in GiB, on the frozen features held in memory during ``fit``.
        With ``unfreeze=0`` they are small pooled embeddings (2 KiB per image
        for resnet18); with ``unfreeze>=1`` they are feature maps (0.77 MiB
        per image for resnet50 at 224 px). If all training images would take
        more, ``fit`` warns and runs the frozen part every epoch instead, as
        with ``cache=False``. See ``docs/performance.md`` for sizes per
        backbone.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Precision of the frozen forward pass (and of training on CUDA, with
        loss scaling for fp16). ``"auto"``: bf16 on GPUs with native bf16
        (compute capability 8.0 or later: A100, H100, RTX 30xx), else fp16;
        on the CPU bf16 only where the CPU has native bf16 units, else fp32.
        ``"fp32"`` turns mixed precision off.
    compile : bool, default=False
        Compile the trained part with ``torch.compile`` (through skorch's
        ``compile`` option; pass its arguments as ``net_params={"compile__mode":
        ...}``). Compilation costs seconds to minutes up front and pays off on
        long GPU fits with ``unfreeze>0``; it needs a C++ compiler on the CPU.
        It compiles one graph (``fullgraph=True``), so a model TorchDynamo
        cannot capture whole raises instead of silently training eagerly;
        ``compile__fullgraph=False`` allows graph breaks. Fits of one
        architecture (CV folds) reuse its compiled graphs, and each
        architecture has its own recompilation budget, so a search does not
        fall back to eager after a few candidates.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU (in a Dask worker,
        the worker's own GPU); or ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
        ``"mps"``. A device this machine lacks is a ``ValueError`` in
        ``fit``; a fitted model loads on ``"auto"``'s pick where its device
        is missing.
    num_workers : int or None, default=None
        Background processes decoding images; ``None`` picks from the number
        of CPUs and images. Always 0 in a daemonic process (a Dask worker, a
        ``multiprocessing`` pool), which may not start them.
    on_bad_image : {"raise", "skip"}, default="raise"
        In ``fit``, unusable image files either raise one error listing all
        of them, or are dropped with their labels and a warning. Prediction
        always raises, since every input needs an output.
    max_image_pixels : int or None, default=None
        Refuse larger images (decompression-bomb guard). ``None`` uses
        Pillow's limit.
    net_params : dict or None, default=None
        Extra keyword arguments for skorch's ``NeuralNetClassifier``, e.g.
        ``{"optimizer__weight_decay": 0.05, "callbacks": [...]}``.
    warm_start : bool, default=False
        When True, ``fit`` on a fitted model continues training its weights
        for ``max_epochs`` more epochs (same classes required) instead of
        starting again. ``history_`` continues, and so does the
        optimizer's running state (e.g. Adam's moment estimates, kept in
        memory after each such fit; not in :meth:`save` files), while its
        settings such as ``lr`` follow the current parameters.
    random_state : int, RandomState instance or None, default=None
        Seeds the head initialisation, shuffling, augmentation and the
        validation split; with an int, fits on the CPU are repeatable.
    verbose : int, default=0
        0 prints nothing; 1 shows progress bars and skorch's epoch table.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted.
    n_classes_ : int
        Number of classes.
    n_features_out_ : int
        Width of :meth:`transform`'s output (the head's input).
    model_ : TransferModule
        The trained torch module (frozen prefix and trainable suffix).
    history_ : skorch.History
        Per-epoch training loss (and validation loss and accuracy).
    device_ : str
        Device the model lives on.
    preprocessing_ : Preprocessing
        Resize, crop and normalisation applied to images.
    batch_size_ : int
        Training batch size actually used (smaller than ``batch_size`` after
        an out-of-memory retry).
    n_frozen_blocks_ : int
        Number of frozen backbone blocks.
    n_train_images_ : int
        Number of images used for training (after skipping bad ones).
    skipped_images_ : list of (str, str)
        Files skipped by ``on_bad_image="skip"``, with the reason.
    interrupted_ : bool
        Whether training was stopped early with Ctrl-C.
    torch_seed_ : int or None
        Seed of the model initialisation, derived from ``random_state``.

    See Also
    --------
    sktransfer.list_backbones : Available backbones.

    Examples
    --------
    >>> from sktransfer import PretrainedCNNClassifier
    >>> clf = PretrainedCNNClassifier(backbone="resnet18", weights=None,
    ...                               max_epochs=2, random_state=0)
    >>> clf.fit(paths, labels)  # doctest: +SKIP
    >>> clf.predict(paths[:3])  # doctest: +SKIP
    """

    _parameter_constraints = {
        **TransferEstimatorBase._parameter_constraints,
        "unfreeze": [Interval(Integral, 0, None, closed="left"), StrOptions({"all"})],
        "hidden_layer_sizes": [tuple, list],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "head_solver": [StrOptions({"auto", "lbfgs", "epochs"})],
        "C": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "layer_decay": [Interval(Real, 0, 1, closed="right")],
        "lr_schedule": [StrOptions({"cosine", "constant"})],
        "warmup_fraction": [Interval(Real, 0, 1, closed="left")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr_ratio": [Interval(Real, 0, None, closed="left")],
        "optimizer": [StrOptions(set(OPTIMIZERS)), type],
        "augment": AUGMENT_CONSTRAINT,
        "augment_views": [Interval(Integral, 1, None, closed="left"), None],
        "tta": TTA_CONSTRAINT,
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "class_weight": [StrOptions({"balanced"}), dict, None],
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
        "classes_", "n_classes_", "history_", "skipped_images_",
        "n_train_images_", "interrupted_", "batch_size_", "n_features_out_",
        "_optimizer_state",
    )  # fmt: skip
    _module_attributes = ("model_",)

    def __init__(
        self,
        backbone="resnet50",
        weights="DEFAULT",
        unfreeze=0,
        *,
        hidden_layer_sizes=(),
        dropout=0.0,
        head_solver="auto",
        C=1.0,
        max_epochs=10,
        lr=1e-3,
        backbone_lr_ratio=0.1,
        layer_decay=1.0,
        lr_schedule="constant",
        warmup_fraction=0.1,
        label_smoothing=0.0,
        batch_size=32,
        inference_batch_size=None,
        optimizer="adamw",
        image_size=None,
        augment=False,
        augment_views=None,
        tta=False,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        class_weight=None,
        batchnorm="auto",
        cache="auto",
        cache_max_gb=4.0,
        precision="auto",
        compile=False,
        device="auto",
        num_workers=None,
        on_bad_image="raise",
        max_image_pixels=None,
        net_params=None,
        warm_start=False,
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.unfreeze = unfreeze
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.head_solver = head_solver
        self.C = C
        self.max_epochs = max_epochs
        self.lr = lr
        self.backbone_lr_ratio = backbone_lr_ratio
        self.layer_decay = layer_decay
        self.lr_schedule = lr_schedule
        self.warmup_fraction = warmup_fraction
        self.label_smoothing = label_smoothing
        self.batch_size = batch_size
        self.inference_batch_size = inference_batch_size
        self.optimizer = optimizer
        self.image_size = image_size
        self.augment = augment
        self.augment_views = augment_views
        self.tta = tta
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.batchnorm = batchnorm
        self.cache = cache
        self.cache_max_gb = cache_max_gb
        self.precision = precision
        self.compile = compile
        self.device = device
        self.num_workers = num_workers
        self.on_bad_image = on_bad_image
        self.max_image_pixels = max_image_pixels
        self.net_params = net_params
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

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
            self.n_classes_,
            hidden_layer_sizes=tuple(self.hidden_layer_sizes),
            dropout=self.dropout,
            freeze_bn_stats=self._freeze_bn_stats(),
            frozen_dtype=self.frozen_dtype_,
        )

    def _build_model(self, seed):
        """Build backbone and head as a fresh fit does, seeded with ``seed``."""
        with seeded(seed, self.device_):
            spec, parts = self._backbone_parts(self.weights)
            n_frozen = spec.n_blocks - self._n_unfrozen(spec.n_blocks)
            self._record_backbone(spec, parts, n_frozen)
            module = self._architecture("model_", parts)
        widths = (parts.feature_dim, *self.hidden_layer_sizes)
        self.n_features_out_ = int(widths[-1])
        return self._place_module(module)

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

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train the head (and unfrozen blocks) on images and labels.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Image file paths (str or pathlib.Path), URLs, PIL images or
            image arrays; a one-column DataFrame of them; or images stacked
            as an array of shape (n_samples, h, w) or (n_samples, h, w, c).
        y : array-like of shape (n_samples,)
            Class labels (strings, integers, ...).
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Non-negative weight of each image in the loss (validation loss
            included). Weights are rescaled to average 1, so only their
            ratios matter; ``None`` weighs every image equally.

        Returns
        -------
        self : PretrainedCNNClassifier
            The fitted estimator.
        """
        warm = self.warm_start and hasattr(self, "model_")
        return self._fit(X, y, sample_weight, warm=warm, max_epochs=self.max_epochs)

    @fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train one more epoch on ``X``, continuing from the fitted weights.

        On an unfitted estimator this fits for a single epoch. Later calls
        may pass new images, whose labels must all be in ``classes_``. The
        optimizer's running state (e.g. Adam's moment estimates) carries
        over between calls, so successive calls continue one optimisation
        instead of restarting it each epoch.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.
        y : array-like of shape (n_samples,)
            Class labels.
        classes : array-like of shape (n_classes,) or None, default=None
            Every class of the problem, for the first call when ``y`` does
            not contain them all; ignored (but checked) once fitted.
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Weight of each image in the loss, as in :meth:`fit`.

        Returns
        -------
        self : PretrainedCNNClassifier
            The estimator, trained one more epoch.
        """
        warm = hasattr(self, "model_")
        if warm and classes is not None and not np.array_equal(
            np.unique(classes), self.classes_
        ):
            raise ValueError(
                f"classes={list(np.unique(classes))} differs from the classes "
                f"the model was fitted with, {self.classes_.tolist()}. A fitted "
                "head cannot change its classes: call fit to start again."
            )
        return self._fit(X, y, sample_weight, warm=warm, max_epochs=1,
                         classes=classes, continued=True)

    def _fit(self, X, y, sample_weight, *, warm, max_epochs, classes=None,
             continued=False):
        paths = check_images(X)
        y = check_targets(y, len(paths))
        limit_threads_in_worker()
        if sample_weight is not None:
            sample_weight = check_sample_weight(
                sample_weight, paths, ensure_non_negative=True
            )
        history = None
        if warm:
            encode_labels(self.classes_, y)
            # A loaded model whose file held no history starts a new one.
            history = getattr(self, "history_", None)
            seed = self._continued_seed(history)
        else:
            self._optimizer_state = None
            self._setup_runtime()
            self.torch_seed_ = seed = torch_seed(self.random_state)
            # Classes are fixed before images are checked so the head can be
            # built; they are checked again if bad images are skipped.
            self._set_classes(y if classes is None else classes)
            encode_labels(self.classes_, y)
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
            features = features[torch.from_numpy(keep)]
        if warm or classes is not None:
            y_encoded = encode_labels(self.classes_, y)
        else:
            y_encoded = self._refit_classes_if_needed(y)
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
                self.model_, recipe, images=images, features=features,
                frozen_pass=frozen_pass, y=y, y_encoded=y_encoded,
                classes=self.classes_, sample_weight=sample_weight,
                device=self.device_, autocast_dtype=self._training_autocast_dtype(),
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

    def _continued_seed(self, history):
        # A different, still reproducible, shuffle for each continued fit;
        # torch_seed_ itself stays, as the feature cache key depends on it.
        seed = getattr(self, "torch_seed_", None)
        if seed is None:
            return None
        return (seed + len(history or ())) % np.iinfo(np.int32).max

    def _set_classes(self, y):
        self.classes_, y_encoded = fit_classes(y)
        self.n_classes_ = len(self.classes_)
        return y_encoded

    def _refit_classes_if_needed(self, y):
        n_before = self.n_classes_
        y_encoded = self._set_classes(y)
        if self.n_classes_ != n_before:
            # Skipping bad images removed a whole class: rebuild the head.
            self.model_ = self._build_model(self.torch_seed_)
        return y_encoded

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
        (parameters, ``classes_`` and their dtype, backbone and weights
        identity, preprocessing, library versions and checksums). Parameters
        with no JSON form (callables, ``joblib.Memory``, skorch callbacks in
        ``net_params``) are not saved: they only matter for training, and
        are listed under ``params_not_saved``.

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
        clf : PretrainedCNNClassifier
            The fitted classifier, on ``device`` (the CPU when it was saved
            on a GPU and none is available).

        Raises
        ------
        sktransfer.ModelFileError
            When a file is missing, not what it claims, or was changed after
            saving.
        """
        from .io import load_model

        return load_model(cls, path)

    def export(self, path, format="onnx", *, input="uint8"):
        """Export the whole network, with a softmax, for serving without sktransfer.

        One file holds the frozen blocks, the trained blocks and the head,
        in float32 for the CPU whatever ``precision`` and ``device`` it was
        fitted with; the batch size is free. Beside it, ``<path>.json``
        records the input, the preprocessing, ``classes_`` with their dtype,
        the output and the library versions. :func:`sktransfer.export_inputs`
        prepares the input from image files as :meth:`predict_proba` does,
        and the output then equals ``predict_proba`` (with ``tta=False`` and,
        for a model fitted in bf16 or fp16, up to that rounding). See
        ``docs/deployment.md``.

        Parameters
        ----------
        path : str or path-like
            Model file to write, e.g. ``"model.onnx"`` or ``"model.pt"``.
        format : {"onnx", "torchscript"}, default="onnx"
            ``"onnx"``: through ``torch.onnx.export``'s torch.export-based
            exporter (needs ``pip install "sktransfer[onnx]"``), for
            onnxruntime. ``"torchscript"``: ``torch.jit.trace``, for
            ``torch.jit.load``; torch has deprecated TorchScript, so prefer
            ONNX for new deployments.
        input : {"uint8", "float"}, default="uint8"
            ``"uint8"``: the input is ``images``, RGB ``uint8`` of shape
            ``(N, 3, crop, crop)`` (``crop = preprocessing_.crop_size``),
            already resized and centre-cropped; scaling and normalisation
            run inside the graph. ``"float"``: normalised ``float32`` images
            of the same shape.

        Returns
        -------
        path : pathlib.Path
            The model file; the sidecar is ``path`` + ``".json"``. The output
            ``proba`` is ``(N, n_classes)`` float32 probabilities, columns in
            the order of ``classes_``.

        Examples
        --------
        >>> clf.export("model.onnx")  # doctest: +SKIP
        >>> from sktransfer import export_inputs
        >>> import onnxruntime  # doctest: +SKIP
        >>> session = onnxruntime.InferenceSession("model.onnx")  # doctest: +SKIP
        >>> images = export_inputs(paths, "model.onnx")  # doctest: +SKIP
        >>> proba = session.run(None, {"images": images})[0]  # doctest: +SKIP
        """
        from .io import export_model

        return export_model(self, path, format, input_kind=input)

    # -- prediction -------------------------------------------------------

    def _run_suffix(self, features, fn):
        return run_in_batches(
            fn, features, batch_size=getattr(self, "batch_size_", self.batch_size),
            device=self.device_, autocast_dtype=self._training_autocast_dtype(),
        )

    def _training_autocast_dtype(self):
        """Mixed precision of the trained part: the frozen dtype on CUDA only."""
        return self.frozen_dtype_ if torch.device(self.device_).type == "cuda" else None

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        check_is_fitted(self)
        self.model_.eval()
        frozen_pass = self._frozen_pass(self.model_.frozen)

        def logits(features):
            return self._run_suffix(features, self.model_.suffix)

        if self.tta is not False:
            views = tta_views(self.tta, self.preprocessing_)
            proba = map_views(frozen_pass, X, views, logits).double()
            return (proba / proba.sum(dim=1, keepdim=True)).numpy()
        return torch.softmax(map_features(frozen_pass, X, logits).double(),
                             dim=1).numpy()

    def predict(self, X):
        """Predicted class label of each image.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def transform(self, X):
        """Penultimate features of the fitted network (the head's input).

        With a linear head this is the pooled backbone embedding (fine-tuned
        blocks included); with hidden layers, the last hidden layer. Like any
        scikit-learn transformer, the output container follows
        :meth:`set_output` (e.g. ``set_output(transform="pandas")``).

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.

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
