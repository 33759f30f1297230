"""Transfer learning for images as scikit-learn estimators."""

from . import _timm, _torchvision_backbones  # noqa: F401  (register the families)
from ._backbones import BackboneSpec, get_backbone, list_backbones, register_backbone
from ._base import BadImagesError
from ._cache import clear_feature_cache
from ._classifier import PretrainedCNNClassifier
from ._extractor import PretrainedFeatureExtractor
from ._folder import load_image_folder
from ._images import ImageLoadError
from ._persistence import InconsistentVersionWarning
from ._safe_format import ModelFileError
from ._training import NonFiniteLossError
from ._version import __version__

__all__ = [
    "BackboneSpec",
    "BadImagesError",
    "ImageLoadError",
    "InconsistentVersionWarning",
    "ModelFileError",
    "NonFiniteLossError",
    "PretrainedCNNClassifier",
    "PretrainedFeatureExtractor",
    "__version__",
    "clear_feature_cache",
    "get_backbone",
    "list_backbones",
    "load_image_folder",
    "register_backbone",
]
