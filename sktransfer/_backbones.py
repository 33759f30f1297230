"""Registry of backbones: how each family is built and cut into ordered blocks.

Every backbone is described by a :class:`BackboneSpec`. Building one returns a
:class:`BackboneParts`: the ordered list of blocks from input to output (the
first is always the stem), the *neck* that turns the last feature map into a
flat embedding (global pooling, plus a final norm for some families), and the
embedding width. ``unfreeze=k`` trains the last ``k`` blocks, so it means the
same thing on every family.
"""

import difflib
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ._transforms import Preprocessing

__all__ = [
    "BackboneParts",
    "BackboneSpec",
    "get_backbone",
    "list_backbones",
    "register_backbone",
]


@dataclass
class BackboneParts:
    """A backbone cut into ordered blocks, a pooling neck and its output width.

    Parameters
    ----------
    blocks : list of torch.nn.Module
        Stages from input to output; ``blocks[0]`` is the stem.
    neck : torch.nn.Module
        Maps the output of the last block to a 2-D ``(n_samples, feature_dim)``
        tensor.
    feature_dim : int
        Width of the embedding produced by ``neck``.
    preprocessing : Preprocessing
        Resize, crop and normalisation the weights were trained with.
    weights_id : str
        Identity of the loaded weights, used in cache keys and manifests.
    """

    blocks: list
    neck: nn.Module
    feature_dim: int
    preprocessing: Preprocessing
    weights_id: str


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and cut it into blocks.

    Parameters
    ----------
    name : str
        Registry name, e.g. ``"resnet50"``.
    family : str
        Architecture family, e.g. ``"resnet"``; shown by :func:`list_backbones`.
    build : callable
        ``build(weights) -> BackboneParts``. ``weights`` is ``"DEFAULT"``, a
        weights name, ``None`` (random init) or a path to a state dict.
    n_blocks : int
        Number of blocks ``build`` returns; the largest valid ``unfreeze``.
    source : str, default="torchvision"
        Where the architecture and weights come from.
    extra : str or None, default=None
        Optional dependency group needed to build it (e.g. ``"timm"``).
    """

    name: str
    family: str
    build: Callable = field(repr=False)
    n_blocks: int
    source: str = "torchvision"
    extra: str = None


_REGISTRY = {}


def register_backbone(spec, *, overwrite=False):
    """Add a backbone to the registry.

    Parameters
    ----------
    spec : BackboneSpec
        The backbone to register.
    overwrite : bool, default=False
        Replace an existing entry of the same name instead of raising.

    Returns
    -------
    spec : BackboneSpec
        The registered spec, so the function can be used on a constant.

    Examples
    --------
    >>> from sktransfer import get_backbone, register_backbone
    >>> spec = get_backbone("resnet18")
    >>> register_backbone(spec)
    Traceback (most recent call last):
    ...
    ValueError: A backbone named 'resnet18' is already registered...
    """
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"A backbone named {spec.name!r} is already registered; pass "
            "overwrite=True to replace it."
        )
    _REGISTRY[spec.name] = spec
    return spec


def get_backbone(name):
    """Return the :class:`BackboneSpec` registered under ``name``.

    Names of the form ``"timm/<model_name>"`` build any timm model (needs the
    ``timm`` extra).

    Parameters
    ----------
    name : str
        Registry name.

    Returns
    -------
    spec : BackboneSpec

    Examples
    --------
    >>> from sktransfer import get_backbone
    >>> get_backbone("resnet50").n_blocks
    5
    """
    if isinstance(name, str) and name.startswith("timm/"):
        from ._timm import timm_backbone

        return timm_backbone(name[len("timm/") :])
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}.{hint} Valid names: {sorted(_REGISTRY)}, or "
        "'timm/<model_name>'. See sktransfer.list_backbones()."
    )


def list_backbones(include=None, exclude=None):
    """List registered backbone names, optionally filtered by family.

    Parameters
    ----------
    include : str or list of str, default=None
        Keep only these families (e.g. ``"resnet"``).
    exclude : str or list of str, default=None
        Drop these families.

    Returns
    -------
    names : list of str
        Sorted backbone names. Any timm model is also accepted as
        ``"timm/<model_name>"``.

    Examples
    --------
    >>> from sktransfer import list_backbones
    >>> list_backbones(include="resnet")
    ['resnet101', 'resnet18', 'resnet34', 'resnet50']
    """
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else exclude or []
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if (include is None or spec.family in include)
        and spec.family not in exclude
    )
