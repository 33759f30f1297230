"""Registry of backbones: what each one is, and how a name resolves to it.

Every backbone is described by a :class:`BackboneSpec`. Building one returns a
:class:`BackboneParts`: the ordered list of blocks from input to output (the
first is always the stem), the *neck* that turns the last feature map into a
flat embedding (global pooling, plus a final norm for some families), and the
embedding width. ``unfreeze=k`` trains the last ``k`` blocks, so it means the
same thing on every family.

Families register their own entries, and a family that accepts open-ended
names (``"timm/<model_name>"``) registers a name prefix with a resolver. The
registry imports no family, so no family module can form a cycle with it.
"""

import dataclasses
import difflib
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .._transforms import Preprocessing

__all__ = [
    "BackboneInfo",
    "BackboneParts",
    "BackboneSpec",
    "feature_layout",
    "get_backbone",
    "list_backbones",
    "register_backbone",
    "register_prefix",
    "set_feature_layout",
]

# Feature maps are (N, C, H, W) unless a block says otherwise; timm's Swin and
# MambaOut stages output (N, H, W, C).
_LAYOUT_ATTRIBUTE = "sktransfer_feature_layout"


def set_feature_layout(block, layout):
    """Record that ``block`` outputs ``"NCHW"`` or ``"NHWC"`` feature maps.

    Kept on the module itself, so it survives pickling, and a model loaded
    from the safe format gets it again from the backbone's build.
    """
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC'; got {layout!r}.")
    setattr(block, _LAYOUT_ATTRIBUTE, layout)


def feature_layout(block):
    """``"NHWC"`` or ``"NCHW"`` (the default) for the 4-D outputs of ``block``."""
    return getattr(block, _LAYOUT_ATTRIBUTE, "NCHW")


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
    n_blocks : int or None, default=None
        Number of blocks ``build`` returns; the largest valid ``unfreeze``.
        ``None`` counts them from the cut itself, by building the
        architecture once on the ``meta`` device (no memory, no weights).
    source : str, default="torchvision"
        Where the architecture and weights come from.
    extra : str or None, default=None
        Optional dependency group needed to build it (e.g. ``"timm"``).
    describe : callable or None, default=None
        ``describe() -> (input_size, offline_weights)``: the crop size the
        default weights were trained at, and whether those weights are on
        this machine (so ``weights="DEFAULT"`` needs no network). Shown by
        ``list_backbones(details=True)``; None when unknown.

    Examples
    --------
    >>> from sktransfer import get_backbone
    >>> spec = get_backbone("resnet18")
    >>> spec.family, spec.n_blocks
    ('resnet', 5)
    """

    name: str
    family: str
    build: Callable = field(repr=False)
    n_blocks: int = None
    source: str = "torchvision"
    extra: str = None
    describe: Callable = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class BackboneInfo:
    """What :func:`list_backbones` says of a backbone with ``details=True``.

    Parameters
    ----------
    name : str
        Registry name.
    family : str
        Architecture family.
    source : str
        Where the architecture and weights come from (``"torchvision"``,
        ``"timm"``, ...).
    n_blocks : int
        Number of blocks of the cut: the largest valid ``unfreeze``.
    input_size : int or None
        Crop size, in pixels, of the default weights' preprocessing (the
        image size they were trained at); None if the family does not say.
    offline_weights : bool or None
        Whether the default weights are already on this machine, so
        ``weights="DEFAULT"`` needs no download; None if unknown.

    Examples
    --------
    >>> from sktransfer import list_backbones
    >>> info = list_backbones(include="resnet", details=True)[0]
    >>> info.name, info.family, info.n_blocks, info.input_size
    ('resnet101', 'resnet', 5, 224)
    """

    name: str
    family: str
    source: str
    n_blocks: int
    input_size: object
    offline_weights: object


def _info(name):
    spec = get_backbone(name)
    input_size, offline = spec.describe() if spec.describe else (None, None)
    return BackboneInfo(
        spec.name, spec.family, spec.source, spec.n_blocks, input_size, offline
    )


_REGISTRY = {}
_PREFIXES = {}
_LOCK = threading.Lock()


def count_blocks(build):
    """Number of blocks ``build(None)`` cuts, built on the ``meta`` device.

    A few architectures compute their layer widths with tensor values while
    being built (RegNet), which the meta device cannot give, and a model that
    cannot be cut should fail with the error a real build gives; those are
    built for real, with random weights, once.
    """
    try:
        with torch.device("meta"):
            return len(build(None).blocks)
    except Exception:  # noqa: BLE001  (any failure: the real build says why)
        return len(build(None).blocks)


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


def register_prefix(prefix, resolver, *, example):
    """Let names starting with ``prefix`` resolve through ``resolver``.

    Parameters
    ----------
    prefix : str
        E.g. ``"timm/"``.
    resolver : callable
        ``resolver(rest_of_name) -> BackboneSpec``; it raises ``ValueError``
        for names it does not know.
    example : str
        How the prefix is written in error messages, e.g. ``"timm/<model_name>"``.
    """
    _PREFIXES[prefix] = (resolver, example)


def _with_block_count(spec):
    if spec.n_blocks is not None:
        return spec
    with _LOCK:
        current = _REGISTRY.get(spec.name)
        if current is not None and current.n_blocks is not None:
            return current
        counted = dataclasses.replace(spec, n_blocks=count_blocks(spec.build))
        if current is spec:
            _REGISTRY[spec.name] = counted
        return counted


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
    if isinstance(name, str):
        for prefix, (resolver, _) in _PREFIXES.items():
            if name.startswith(prefix):
                return _with_block_count(resolver(name[len(prefix):]))
    try:
        spec = _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        prefixes = "".join(f", or {example!r}" for _, example in _PREFIXES.values())
        raise ValueError(
            f"Unknown backbone {name!r}.{hint} Valid names: {sorted(_REGISTRY)}"
            f"{prefixes}. See sktransfer.list_backbones()."
        ) from None
    return _with_block_count(spec)


def list_backbones(include=None, exclude=None, *, details=False):
    """List registered backbone names, optionally filtered by family.

    Parameters
    ----------
    include : str or list of str, default=None
        Keep only these families (e.g. ``"resnet"``).
    exclude : str or list of str, default=None
        Drop these families.
    details : bool, default=False
        Return a :class:`BackboneInfo` per backbone (family, number of
        blocks, native input size, weights available offline) instead of
        its name. Counting blocks builds each architecture once, on the
        meta device where it can.

    Returns
    -------
    names : list of str, or list of BackboneInfo with ``details=True``
        Sorted by backbone name. Any timm model is also accepted as
        ``"timm/<model_name>"``.

    Examples
    --------
    >>> from sktransfer import list_backbones
    >>> list_backbones(include="resnet")
    ['resnet101', 'resnet18', 'resnet34', 'resnet50']
    """
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else exclude or []
    names = sorted(
        name
        for name, spec in _REGISTRY.items()
        if (include is None or spec.family in include)
        and spec.family not in exclude
    )
    return [_info(name) for name in names] if details else names
