"""The public feature extractor: a frozen pretrained CNN as a transformer."""

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._base import TransferEstimatorBase
from ._compat import fit_context
from ._frozen import map_features
from ._module import frozen_prefix
from ._runtime import seeded, torch_seed
from ._sources import check_images

__all__ = ["PretrainedFeatureExtractor"]


class PretrainedFeatureExtractor(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, TransferEstimatorBase
):
    """Pooled embeddings of images from a frozen pretrained CNN.

    ``X`` holds one image per sample (file paths, URLs, PIL images or numpy
    arrays; see "Inputs" in the user guide); :meth:`transform` returns
    one row of ``n_features_out`` floats per image, so any scikit-learn model
    can be trained on top (logistic regression, kNN, SVMs, ...). Embeddings
    go through the same feature cache as :class:`PretrainedCNNClassifier`,
    and equal the features its frozen part computes with ``unfreeze=0``.

    Parameters
    ----------
    backbone : str, default="resnet50"
        Registered backbone name (see :func:`sktransfer.list_backbones`), or
        ``"timm/<model_name>"`` for any timm model.
    weights : str, path or None, default="DEFAULT"
        ``"DEFAULT"`` for the recommended pretrained weights, a weights name
        such as ``"IMAGENET1K_V2"``, ``None`` for random initialisation, or
        the path of a local state-dict file (``.pth`` or ``.safetensors``).
    image_size : int or None, default=None
        Side of the square crop fed to the network. ``None`` uses the size
        the weights were trained with.
    batch_size : int, default=64
        Images per forward pass.
    cache : "auto", bool, path or joblib.Memory, default="auto"
        Feature cache: ``"auto"``/``True`` in memory for this process, a
        directory or ``joblib.Memory`` also on disk (shared across processes),
        ``False`` never.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        Precision of the forward pass; ``"auto"`` as in
        :class:`PretrainedCNNClassifier`.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU; or any torch
        device string.
    num_workers : int or None, default=None
        Background processes decoding images; ``None`` picks from the number
        of CPUs and images. Always 0 in a daemonic process (a Dask worker, a
        ``multiprocessing`` pool), which may not start them.
    max_image_pixels : int or None, default=None
        Refuse larger images (decompression-bomb guard).
    intensity : str or tuple, default="auto"
        How pixel values become 8 bits: ``"auto"``, ``"bit_depth"``,
        ``"minmax"``, ``"percentile"`` or a ``(low, high)`` window, as
        described for :class:`PretrainedCNNClassifier`.
    channels : {"rgb", "grey"}, default="rgb"
        ``"grey"`` feeds one luminance channel to a first convolution
        adapted to it, as described for :class:`PretrainedCNNClassifier`.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation of a backbone with ``weights=None``.
    verbose : int, default=0
        0 prints nothing; 1 shows a progress bar while extracting.

    Attributes
    ----------
    n_features_out_ : int
        Width of the embedding.
    device_ : str
        Device the backbone lives on.
    preprocessing_ : Preprocessing
        Resize, crop and normalisation applied to images.
    frozen_ : torch.nn.Module
        The frozen backbone and pooling neck.

    See Also
    --------
    PretrainedCNNClassifier : Trains a head (and optionally blocks) end to end.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sktransfer import PretrainedFeatureExtractor
    >>> model = make_pipeline(
    ...     PretrainedFeatureExtractor(backbone="resnet18"), LogisticRegression()
    ... )
    >>> model.fit(paths, labels)  # doctest: +SKIP
    """

    _parameter_constraints = {
        name: constraint
        for name, constraint in TransferEstimatorBase._parameter_constraints.items()
        if name != "inference_batch_size"
    }
    _fitted_values = (*TransferEstimatorBase._fitted_values, "n_features_out_")
    _module_attributes = ("frozen_",)

    def __init__(
        self,
        backbone="resnet50",
        weights="DEFAULT",
        *,
        image_size=None,
        batch_size=64,
        cache="auto",
        precision="auto",
        device="auto",
        num_workers=None,
        max_image_pixels=None,
        intensity="auto",
        channels="rgb",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.image_size = image_size
        self.batch_size = batch_size
        self.cache = cache
        self.precision = precision
        self.device = device
        self.num_workers = num_workers
        self.max_image_pixels = max_image_pixels
        self.intensity = intensity
        self.channels = channels
        self.random_state = random_state
        self.verbose = verbose

    def _architecture(self, attr, parts):
        # Every block and the pooling neck, frozen: the same layers as the
        # frozen part of a classifier with unfreeze=0, so both produce (and
        # cache) the same features.
        return frozen_prefix(parts, len(parts.blocks))

    def _inference_batch_size(self):
        return self.batch_size

    @property
    def _n_features_out(self):
        # Read by ClassNamePrefixFeaturesOutMixin.get_feature_names_out.
        return self.n_features_out_

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Build the frozen backbone (loading its weights); no training.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Image file paths, URLs, PIL images or image arrays, a one-column
            DataFrame of them, or images stacked as an array of shape
            (n_samples, h, w) or (n_samples, h, w, c); only validated, not read.
        y : None
            Ignored.

        Returns
        -------
        self : PretrainedFeatureExtractor
            The fitted extractor.
        """
        check_images(X)
        self._setup_runtime()
        self.torch_seed_ = torch_seed(self.random_state)
        # Seeded exactly as the classifier builds its backbone, so a random
        # backbone is the same one (and shares cached features).
        with seeded(self.torch_seed_, self.device_):
            spec, parts = self._backbone_parts(self.weights)
        self._record_backbone(spec, parts, n_frozen_blocks=spec.n_blocks)
        self.n_features_out_ = parts.feature_dim
        self.frozen_ = self._place_module(self._architecture("frozen_", parts))
        return self

    def transform(self, X):
        """Pooled embedding of each image.

        Parameters
        ----------
        X : array-like of shape (n_samples,), DataFrame or ndarray
            Images, in any form :meth:`fit` takes.

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out_), float32
            Float32 whatever ``precision``: with bf16 or fp16 the backbone
            runs, and its features are cached, in that precision (half the
            memory), and are widened here to the dtype scikit-learn models
            expect.
        """
        check_is_fitted(self)
        # Widened a chunk at a time: the cache keeps the stored dtype.
        features = map_features(
            self._frozen_pass(self.frozen_), X, lambda rows: rows.float()
        )
        return np.ascontiguousarray(features.numpy(), dtype=np.float32)

    def export(self, path, format="onnx", *, input="uint8"):
        """Export the frozen backbone for serving without sktransfer.

        As :meth:`PretrainedCNNClassifier.export`, with output
        ``embeddings``: ``(N, n_features_out_)`` float32, equal to
        :meth:`transform` on the images :func:`sktransfer.export_inputs`
        prepares.

        Parameters
        ----------
        path : str or path-like
            Model file to write; the sidecar is ``<path>.json``.
        format : {"onnx", "torchscript"}, default="onnx"
            ONNX (needs ``pip install "sktransfer[onnx]"``) or TorchScript.
        input : {"uint8", "float"}, default="uint8"
            Resized and cropped ``uint8`` images, or normalised ``float32``.

        Returns
        -------
        path : pathlib.Path
            The model file.

        Examples
        --------
        >>> PretrainedFeatureExtractor("resnet18").fit(paths).export(
        ...     "embed.onnx")  # doctest: +SKIP
        """
        from .io import export_model

        return export_model(self, path, format, input_kind=input)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = []  # images in, float32 out
        return tags
