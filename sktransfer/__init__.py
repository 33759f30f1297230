"""Transfer learning for images as scikit-learn estimators.

The package follows the data's path: ``backbones`` (what a network is and
how it is cut into blocks) → ``_images``/``_transforms``/``_data`` (files
to tensors) → ``_frozen``/``_cache`` (the frozen part, run once and cached)
→ ``_module``/``_training`` (what trains, through skorch) → the estimators,
which only orchestrate → ``io`` (pickles and the safe format) and the
command line. ``_runtime`` is the only place that reads the hardware and
``_compat`` the only one that imports other libraries' private names.
"""

from ._cache import clear_feature_cache
from ._classifier import PretrainedCNNClassifier
from ._cluster_cache import cache_features, dask_cache_features
from ._dask_inference import dask_predict
from ._extractor import PretrainedFeatureExtractor
from ._folder import load_image_folder
from ._images import BadImagesError, ImageLoadError
from ._regressor import PretrainedCNNRegressor
from ._training import NonFiniteLossError
from ._version import __version__
from .backbones import (
    BackboneInfo,
    BackboneSpec,
    get_backbone,
    list_backbones,
    register_backbone,
)
from .io import InconsistentVersionWarning, ModelFileError, export_inputs

__all__ = [
    "BackboneInfo",
    "BackboneSpec",
    "BadImagesError",
    "ImageLoadError",
    "InconsistentVersionWarning",
    "ModelFileError",
    "NonFiniteLossError",
    "PretrainedCNNClassifier",
    "PretrainedCNNRegressor",
    "PretrainedFeatureExtractor",
    "__version__",
    "cache_features",
    "clear_feature_cache",
    "dask_cache_features",
    "dask_predict",
    "export_inputs",
    "get_backbone",
    "list_backbones",
    "load_image_folder",
    "register_backbone",
]
