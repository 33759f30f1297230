"""Backbones: the registry, the families that fill it, and weights loading.

Importing this package registers every family: torchvision's classification
models by name, ``efficientnet_lite0`` and any timm model as
``"timm/<model_name>"`` (timm itself is imported only when one is built).
"""

from . import _timm, _torchvision  # noqa: F401  (each family registers itself)
from ._registry import (
    BackboneInfo,
    BackboneParts,
    BackboneSpec,
    get_backbone,
    list_backbones,
    register_backbone,
    register_prefix,
)

__all__ = [
    "BackboneInfo",
    "BackboneParts",
    "BackboneSpec",
    "get_backbone",
    "list_backbones",
    "register_backbone",
    "register_prefix",
]
