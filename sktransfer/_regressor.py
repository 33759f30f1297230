"""The public regressor: a pretrained CNN with a new head for real values."""

from numbers import Real

import numpy as np
from sklearn.base import RegressorMixin

from ._compat import Interval, StrOptions, fit_context
from ._targets import check_regression_targets, target_scaling
from ._tasks import RegressionTask
from ._trained import TrainedTransferBase

__all__ = ["PretrainedCNNRegressor"]


class PretrainedCNNRegressor(RegressorMixin, TrainedTransferBase):
    """Image regressor from a pretrained CNN backbone and a trainable head.

    The regression counterpart of :class:`PretrainedCNNClassifier`: ``X``
    is a 1-D array-like of image file paths, ``y`` one real value per image
    (shape ``(n_samples,)``) or several (``(n_samples, n_outputs)``). The
    backbone, ``unfreeze``, the feature cache, augmentation, early stopping,
    :meth:`transform`, :meth:`save`/:meth:`load` and pickling work as for the
    classifier. The targets are standardised inside (by their training mean
    and standard deviation, ``y_mean_`` and ``y_scale_``), so ``lr`` and
    ``alpha`` mean the same whatever the targets' units; predictions are
    in the original units. :meth:`score` is the coefficient of
    determination R².

    Parameters
    ----------
    backbone : str, default="resnet50"
        Registered backbone name (see :func:`sktransfer.list_backbones`), or
        ``"timm/<model_name>"`` for any timm model.
    weights : str, path or None, default="DEFAULT"
        ``"DEFAULT"`` for the recommended pretrained weights, a weights name,
        ``None`` for random initialisation, or the path of a local
        state-dict file.
    unfreeze : int or "all", default=0
        How many of the backbone's last blocks train: 0 trains only the head;
        ``"all"`` fine-tunes the whole network.
    hidden_layer_sizes : tuple of int, default=()
        Hidden layers of the head; ``()`` is a linear head.
    dropout : float, default=0.0
        Dropout before each layer of the head.
    head_solver : {"auto", "lbfgs", "epochs"}, default="auto"
        How the head is first fitted. ``"auto"`` is ``"lbfgs"`` with
        ``unfreeze=0`` and ``"epochs"`` otherwise. ``"lbfgs"``: to the
        optimum of the L2-penalised loss on the pooled embeddings of the
        training images. A linear head with ``loss="squared_error"`` is
        solved in closed form: ridge regression, the model of
        ``sklearn.linear_model.Ridge(alpha)`` on those embeddings. Other
        heads and the Huber loss are fitted by full-batch L-BFGS. With
        ``unfreeze=0`` and ``augment=False`` that is the whole fit;
        otherwise the epochs start from that head. ``"epochs"``: the head
        trains only in the epoch loop.
    alpha : float, default=1.0
        Strength of the L2 penalty of the L-BFGS head fit, in the sense of
        ``sklearn.linear_model.Ridge`` (``0`` for no penalty). Not used by
        the epoch loop (use ``net_params={"optimizer__weight_decay": ...}``).
    loss : {"squared_error", "huber"}, default="squared_error"
        The training loss. ``"huber"`` is quadratic for residuals within one
        standard deviation of the targets and linear beyond it, so outliers
        pull less.
    max_epochs : int, default=10
        Training epochs (fine-tuning, or the head with ``head_solver="epochs"``).
    lr : float, default=1e-3
        Peak learning rate of the head in the epoch loop.
    backbone_lr_ratio : float, default=0.1
        Learning rate of the last unfrozen backbone block, relative to ``lr``.
    layer_decay : float, default=1.0
        Each unfrozen block trains at ``layer_decay`` times the rate of the
        block after it.
    lr_schedule : {"constant", "cosine"}, default="constant"
        ``"cosine"``: linear warmup, then cosine decay to zero.
    warmup_fraction : float, default=0.1
        Share of the steps spent warming up with ``lr_schedule="cosine"``.
    batch_size : int, default=32
        Training batch size (halved on out-of-memory; see ``batch_size_``).
    inference_batch_size : int or None, default=None
        Batch size for feature extraction and prediction; ``None`` means
        ``2 * batch_size``.
    optimizer : {"adamw", "adam", "sgd"} or torch optimizer class, default="adamw"
        Optimizer; ``"sgd"`` uses momentum 0.9.
    image_size : int or None, default=None
        Side of the square crop fed to the network; ``None`` uses the size
        the weights were trained with.
    augment : bool, {"light", "classic", "trivialaugment"} or callable, \
            default=False
        Random views of the training images, as for
        :class:`PretrainedCNNClassifier`. Choose transforms that keep the
        target: a flip keeps a mean brightness, a crop may not keep a count.
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
        Test-time augmentation in :meth:`predict`: predictions averaged over
        the image and its mirror (``"flip"``) or ten crops (``"crops"``).
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (at random,
        seeded by ``random_state``), stop when its loss has not improved for
        ``n_iter_no_change`` epochs, and keep the best epoch's weights.
    validation_fraction : float, default=0.1
        Fraction held out for early stopping.
    n_iter_no_change : int, default=5
        Epochs without improvement of the validation loss before stopping.
    batchnorm : {"auto", "frozen", "train"}, default="auto"
        BatchNorm layers inside unfrozen blocks: keep their pretrained
        statistics (``"frozen"``) or update them (``"train"``); ``"auto"``
        is ``"frozen"`` for pretrained weights.
    cache : "auto", bool, path or joblib.Memory, default="auto"
        Feature cache of the frozen part, shared with the classifier and the
        feature extractor (it depends on the images only, not on ``y``).
    cache_max_gb : float, default=4.0
        Bound, in GiB, on the frozen features held in memory during ``fit``;
        beyond it they are memory-mapped from a file, as in the classifier.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Precision of the frozen forward pass (and of training on CUDA).
    compile : bool, default=False
        Compile the trained part with ``torch.compile``.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU; or any torch
        device string.
    num_workers : int or None, default=None
        Background processes decoding images; ``None`` picks from the number
        of CPUs and images.
    on_bad_image : {"raise", "skip"}, default="raise"
        In ``fit``, unusable image files either raise one error listing all
        of them, or are dropped with their targets and a warning.
    max_image_pixels : int or None, default=None
        Refuse larger images (decompression-bomb guard).
    intensity : str or tuple, default="auto"
        How pixel values become 8 bits: ``"auto"``, ``"bit_depth"``,
        ``"minmax"``, ``"percentile"`` or a ``(low, high)`` window, as
        described for :class:`PretrainedCNNClassifier`.
    channels : {"rgb", "grey"}, default="rgb"
        ``"grey"`` feeds one luminance channel to a first convolution
        adapted to it, as described for :class:`PretrainedCNNClassifier`.
    net_params : dict or None, default=None
        Extra keyword arguments for skorch's ``NeuralNetRegressor``.
    warm_start : bool, default=False
        When True, ``fit`` on a fitted model continues training its weights
        (with the target scaling of the first fit) for ``max_epochs`` more
        epochs.
    random_state : int, RandomState instance or None, default=None
        Seeds the head initialisation, shuffling, augmentation and the
        validation split.
    verbose : int, default=0
        0 prints nothing; 1 shows progress bars and skorch's epoch table.

    Attributes
    ----------
    n_outputs_ : int
        Number of target columns.
    y_mean_ : ndarray of shape (n_outputs,)
        Mean of the training targets.
    y_scale_ : ndarray of shape (n_outputs,)
        Standard deviation of the training targets (1 for a constant one).
    n_features_out_ : int
        Width of :meth:`transform`'s output (the head's input).
    model_ : TransferModule
        The trained torch module; it predicts standardised targets.
    history_ : skorch.History
        Per-epoch training loss (and validation loss), on the standardised
        targets.
    device_ : str
        Device the model lives on.
    preprocessing_ : Preprocessing
        Resize, crop and normalisation applied to images.
    batch_size_ : int
        Training batch size actually used.
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
    PretrainedCNNClassifier : The same model for class labels.
    PretrainedFeatureExtractor : Frozen embeddings for any scikit-learn model.

    Examples
    --------
    >>> from sktransfer import PretrainedCNNRegressor
    >>> reg = PretrainedCNNRegressor(backbone="resnet18", alpha=1.0)
    >>> reg.fit(paths, ages)  # doctest: +SKIP
    >>> reg.predict(paths[:3])  # doctest: +SKIP
    """

    _parameter_constraints = {
        **TrainedTransferBase._parameter_constraints,
        "alpha": [Interval(Real, 0, None, closed="left")],
        "loss": [StrOptions({"squared_error", "huber"})],
    }

    _fitted_values = (
        *TrainedTransferBase._fitted_values, "n_outputs_", "y_mean_", "y_scale_",
    )  # fmt: skip

    def __init__(
        self,
        backbone="resnet50",
        weights="DEFAULT",
        unfreeze=0,
        *,
        hidden_layer_sizes=(),
        dropout=0.0,
        head_solver="auto",
        alpha=1.0,
        loss="squared_error",
        max_epochs=10,
        lr=1e-3,
        backbone_lr_ratio=0.1,
        layer_decay=1.0,
        lr_schedule="constant",
        warmup_fraction=0.1,
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
        batchnorm="auto",
        cache="auto",
        cache_max_gb=4.0,
        precision="auto",
        compile=False,
        device="auto",
        num_workers=None,
        on_bad_image="raise",
        max_image_pixels=None,
        intensity="auto",
        channels="rgb",
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
        self.alpha = alpha
        self.loss = loss
        self.max_epochs = max_epochs
        self.lr = lr
        self.backbone_lr_ratio = backbone_lr_ratio
        self.layer_decay = layer_decay
        self.lr_schedule = lr_schedule
        self.warmup_fraction = warmup_fraction
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
        self.batchnorm = batchnorm
        self.cache = cache
        self.cache_max_gb = cache_max_gb
        self.precision = precision
        self.compile = compile
        self.device = device
        self.num_workers = num_workers
        self.on_bad_image = on_bad_image
        self.max_image_pixels = max_image_pixels
        self.intensity = intensity
        self.channels = channels
        self.net_params = net_params
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Train the head (and unfrozen blocks) on images and their targets.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Image file paths (str or pathlib.Path), URLs, PIL images or
            image arrays; a one-column DataFrame of them; or images stacked
            as an array of shape (n_samples, h, w) or (n_samples, h, w, c).
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Real-valued targets.
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Non-negative weight of each image in the loss, rescaled to
            average 1.

        Returns
        -------
        self : PretrainedCNNRegressor
            The fitted estimator.
        """
        warm = self.warm_start and hasattr(self, "model_")
        return self._fit(X, y, sample_weight, warm=warm, max_epochs=self.max_epochs)

    @fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Train one more epoch on ``X``, continuing from the fitted weights.

        The first call fits the target scaling and trains one epoch; later
        calls keep that scaling and the optimizer's running state.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Real-valued targets, with as many outputs as the first call.
        sample_weight : array-like of shape (n_samples,) or None, default=None
            Weight of each image in the loss.

        Returns
        -------
        self : PretrainedCNNRegressor
            The estimator, trained one more epoch.
        """
        warm = hasattr(self, "model_")
        return self._fit(X, y, sample_weight, warm=warm, max_epochs=1,
                         continued=True)

    # -- targets ------------------------------------------------------------

    def _check_y(self, y, n_samples):
        return check_regression_targets(y, n_samples)

    def _fit_targets(self, y, classes):
        self.n_outputs_ = y.shape[1]
        self.y_mean_, self.y_scale_ = target_scaling(y)

    def _encode_targets(self, y):
        if y.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {y.shape[1]} output(s), but the model was fitted on "
                f"{self.n_outputs_}. Continued training (warm_start, "
                "partial_fit) keeps the outputs of the first fit; refit from "
                "scratch."
            )
        return ((y - self.y_mean_) / self.y_scale_).astype(np.float32)

    def _n_outputs(self):
        return self.n_outputs_

    def _task(self, targets=None):
        return RegressionTask(self.y_mean_, self.y_scale_, loss=self.loss,
                              alpha=self.alpha)

    def _restore_fitted_state(self, values, modules, *, parts=None):
        values = dict(values)
        for name in ("y_mean_", "y_scale_"):
            if name in values:  # lists in a saved model's JSON manifest
                values[name] = np.asarray(values[name], dtype=np.float64)
        return super()._restore_fitted_state(values, modules, parts=parts)

    # -- prediction -------------------------------------------------------

    def predict(self, X):
        """Predicted target(s) of each image, in the units of ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            1-D when the model has one output (as ``MLPRegressor``, also for
            a ``y`` of shape ``(n_samples, 1)``).
        """
        outputs = self._predicted_outputs(X)
        return outputs.ravel() if self.n_outputs_ == 1 else outputs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
