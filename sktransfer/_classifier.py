"""The public classifier: a pretrained CNN with a new head, on image paths."""

from numbers import Real

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.base import ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, StrOptions, fit_context
from ._labels import check_targets, class_loss_weights, encode_labels, fit_classes
from ._targets import (
    as_multilabel_targets,
    encode_multilabel,
    positive_weights,
    warn_constant_labels,
)
from ._tasks import MultiLabelTask, SingleLabelTask
from ._trained import TrainedTransferBase

__all__ = ["PretrainedCNNClassifier"]


class PretrainedCNNClassifier(ClassifierMixin, TrainedTransferBase):
    """Image classifier from a pretrained CNN backbone and a trainable head.

    ``X`` holds one image per sample: file paths, URLs, PIL images or numpy
    arrays (see "Inputs" in the user guide). The backbone is cut into
    ordered blocks (stem first); the last ``unfreeze`` blocks and a new head
    are trained, the rest stays frozen, BatchNorm statistics included. With
    the frozen part fixed and ``augment=False``, its output is computed once
    per image and cached, so each epoch only runs what is trained.

    ``y`` is one label per image, or several: an indicator matrix of shape
    ``(n_samples, n_labels)`` (dense, sparse, or a DataFrame whose columns
    name the labels) or one collection of labels per image, as
    ``MultiLabelBinarizer`` takes them. Multi-label targets train one sigmoid
    output per label with the binary cross-entropy, and :meth:`predict`
    returns an indicator matrix (see the user guide's "Targets" section).

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
        L2-penalised loss (strength ``1/C``, as ``LogisticRegression``; one
        logistic regression per label for multi-label targets) by
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
        Label smoothing of the cross-entropy loss; with multi-label targets,
        each 0/1 target ``t`` becomes ``t * (1 - label_smoothing) +
        label_smoothing / 2``.
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
        Hold out ``validation_fraction`` of the training data (stratified by
        class for single labels, at random for multi-label targets; seeded
        by ``random_state``), report its loss (and accuracy, for single
        labels) each epoch, stop when its loss has not improved for
        ``n_iter_no_change`` epochs, and keep the weights of the best epoch.
        ``False`` trains on everything for ``max_epochs``.
    validation_fraction : float, default=0.1
        Fraction held out for early stopping. Only used if
        ``early_stopping=True``.
    n_iter_no_change : int, default=5
        Epochs without improvement of the validation loss before training
        stops. Only used if ``early_stopping=True``.
    class_weight : "balanced", dict or None, default=None
        Weights of the classes in the loss. With multi-label targets, the
        weight of each label's positive examples (``pos_weight`` of the
        binary cross-entropy): ``"balanced"`` is ``n_negative / n_positive``
        per label, a dict maps labels to weights (others weigh 1).
    threshold : float, default=0.5
        With multi-label targets, :meth:`predict` gives an image every label
        whose probability is above ``threshold``. Not used for single labels.
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
        per image for resnet50 at 224 px). These sizes are fp32's; a bf16 or
        fp16 ``precision`` halves them. If all training images would take
        more, the features of the fit are memory-mapped from a file (beside
        the disk cache, else in the temporary directory, ``TMPDIR``) that the
        operating system pages in as training reads them; only if that disk
        lacks the room does ``fit`` warn and run the frozen part every epoch,
        as with ``cache=False``. See ``docs/performance.md`` for sizes per
        backbone.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Precision of the frozen forward pass (and of training on CUDA, with
        loss scaling for fp16). ``"auto"``: bf16 on GPUs with native bf16
        (compute capability 8.0 or later: A100, H100, RTX 30xx), else fp16;
        on the CPU bf16 only where the CPU has native bf16 units, else fp32.
        ``"fp32"`` turns mixed precision off. In bf16 or fp16 the cached
        frozen features are kept in that precision too: they take half the
        memory and disk of fp32, and twice as many fit in ``cache_max_gb``.
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
    intensity : str or tuple, default="auto"
        How pixel values become the 8 bits the weights expect. ``"auto"``
        leaves 8-bit images unchanged and scales high-bit-depth ones (16-bit
        PNG/TIFF, DICOM) by their significant bits (a 12-bit image stored in
        16 bits: 4095 becomes 255), or by a DICOM file's own window;
        ``"bit_depth"`` by the storage depth (16 bits divided by 257);
        ``"minmax"`` and ``"percentile"`` stretch each image (1st to 99th
        percentile); ``(low, high)`` is a fixed window in the file's units.
        See "Medical and high-bit-depth images" in the user guide.
    channels : {"rgb", "grey"}, default="rgb"
        ``"grey"`` turns every image into one luminance channel and adapts
        the backbone's first convolution to it (its filters summed over
        the colour channels, with the normalisation folded in, so that it
        computes what it computes on the grey image copied into RGB except
        along the border). For grey images (X-rays, scans, documents) it
        keeps a third of the pixels in memory during augmented fits; for
        colour images it discards colour. See "Medical and high-bit-depth
        images" in the user guide.
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
        Class labels, sorted; with multi-label targets, the label of each
        column: ``0 .. n_labels - 1`` for a matrix, a DataFrame's column
        names, or the sorted labels of label collections.
    n_classes_ : int
        Number of classes (labels).
    multilabel_ : bool
        Whether the model was fitted on multi-label targets.
    sparse_output_ : bool
        Whether :meth:`predict` returns a sparse matrix (multi-label targets
        given as one).
    n_features_out_ : int
        Width of :meth:`transform`'s output (the head's input).
    model_ : TransferModule
        The trained torch module (frozen prefix and trainable suffix).
    history_ : skorch.History
        Per-epoch training loss (and validation loss, and accuracy for
        single labels).
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
    PretrainedCNNRegressor : The same model for real-valued targets.

    Examples
    --------
    >>> from sktransfer import PretrainedCNNClassifier
    >>> clf = PretrainedCNNClassifier(backbone="resnet18", weights=None,
    ...                               max_epochs=2, random_state=0)
    >>> clf.fit(paths, labels)  # doctest: +SKIP
    >>> clf.predict(paths[:3])  # doctest: +SKIP
    """
    _parameter_constraints = {
        **TrainedTransferBase._parameter_constraints,
        "C": [Interval(Real, 0, None, closed="neither")],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "threshold": [Interval(Real, 0, 1, closed="neither")],
    }

    # Names starting with "_" are kept in pickles but not in save() files.
    _fitted_values = (
        *TrainedTransferBase._fitted_values,
        "classes_", "n_classes_", "multilabel_", "sparse_output_",
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
        threshold=0.5,
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
        self.threshold = threshold
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
        """Train the head (and unfrozen blocks) on images and labels.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Image file paths (str or pathlib.Path), URLs, PIL images or
            image arrays; a one-column DataFrame of them; or images stacked
            as an array of shape (n_samples, h, w) or (n_samples, h, w, c).
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels (strings, integers, ...); for multi-label targets
            an indicator matrix (dense or sparse) or one collection of labels
            per image.
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
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            Class labels, or multi-label targets as in :meth:`fit`.
        classes : array-like of shape (n_classes,) or None, default=None
            Every class (or label, for label collections) of the problem,
            for the first call when ``y`` does not contain them all; ignored
            (but checked) once fitted.
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


    # -- targets ------------------------------------------------------------

    @property
    def _multilabel(self):
        # Models saved before multi-label targets existed have no attribute.
        return getattr(self, "multilabel_", False)

    def _check_y(self, y, n_samples):
        targets = as_multilabel_targets(y)
        if targets is None:
            return check_targets(y, n_samples)
        if len(targets) != n_samples:
            raise ValueError(
                f"X and y have inconsistent numbers of samples: {n_samples} "
                f"image paths and {len(targets)} rows of labels."
            )
        return targets

    def _fit_targets(self, y, classes):
        self.multilabel_ = not isinstance(y, np.ndarray)
        self.sparse_output_ = self.multilabel_ and y.sparse
        if not self.multilabel_:
            self.classes_, _ = fit_classes(y if classes is None else classes)
        elif classes is not None and y.from_sets:
            self.classes_ = np.unique(np.asarray(classes))
        else:
            self.classes_ = y.labels
        self.n_classes_ = len(self.classes_)

    def _encode_targets(self, y):
        multilabel = not isinstance(y, np.ndarray)
        if multilabel != self._multilabel:
            given, fitted = ("multi-label", "single") if multilabel else (
                "single-label", "multi-label")
            raise ValueError(
                f"y is {given}, but the model was fitted on {fitted} targets. "
                "Continued training (warm_start, partial_fit) keeps the kind "
                "of target of the first fit; refit from scratch."
            )
        if multilabel:
            return encode_multilabel(self.classes_, y)
        return encode_labels(self.classes_, y)

    def _n_outputs(self):
        return self.n_classes_

    def _task(self, targets=None):
        if self._multilabel:
            pos_weight = None
            if targets is not None:
                warn_constant_labels(self.classes_, targets)
                pos_weight = positive_weights(self.class_weight, self.classes_,
                                              targets)
            return MultiLabelTask(self.n_classes_, pos_weight=pos_weight,
                                  label_smoothing=self.label_smoothing, C=self.C)
        class_weight = None if targets is None else class_loss_weights(
            self.class_weight, self.classes_, self.classes_[targets])
        return SingleLabelTask(self.n_classes_, class_weight=class_weight,
                               label_smoothing=self.label_smoothing, C=self.C)

    # -- prediction -------------------------------------------------------

    def export(self, path, format="onnx", *, input="uint8"):
        """Export the whole network and its probabilities, to serve without sktransfer.

        The graph ends in a softmax over classes, or for a multi-label model
        in a sigmoid per label (the sidecar then records ``threshold``).
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


    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        With multi-label targets, the probability of each label on its own
        (rows need not sum to 1).

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        return self._predicted_outputs(X)

    def predict(self, X):
        """Predicted class label of each image, or its labels.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_classes)
            Labels from ``classes_``; with multi-label targets an indicator
            matrix (int, 1 where the probability is above ``threshold``),
            sparse when ``y`` was sparse, whichever form ``y`` took.
        """
        proba = self.predict_proba(X)
        if not self._multilabel:
            return self.classes_[np.argmax(proba, axis=1)]
        indicator = (proba > self.threshold).astype(np.int64)
        return csr_matrix(indicator) if self.sparse_output_ else indicator

    def score(self, X, y, sample_weight=None):
        """Accuracy on ``(X, y)``; subset accuracy for multi-label targets.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.
        y : array-like of shape (n_samples,) or (n_samples, n_labels)
            True labels, in any form :meth:`fit` takes (label collections
            included).
        sample_weight : array-like of shape (n_samples,) or None, default=None

        Returns
        -------
        score : float
            The share of images whose label (every label) is predicted right.
        """
        check_is_fitted(self)
        if not self._multilabel:
            return super().score(X, y, sample_weight=sample_weight)
        y_pred = self.predict(X)
        if self.sparse_output_:
            y_pred = y_pred.toarray()
        y_true = self._encode_targets(self._check_y(y, len(y_pred)))
        return float(accuracy_score(y_true, y_pred, sample_weight=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        tags.target_tags.multi_output = True
        return tags
