"""torchvision classification families, each cut into its natural stages."""

import itertools

from torch import nn
from torchvision.models import get_model, get_model_weights

from .._transforms import Preprocessing
from ._registry import BackboneParts, BackboneSpec, register_backbone
from ._weights import (
    hub_checkpoint,
    is_weights_path,
    load_backbone_state,
    load_torchvision_weights,
    weights_file_id,
)


def _pool():
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def _resnet_parts(m):
    stem = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)
    blocks = [stem, m.layer1, m.layer2, m.layer3, m.layer4]
    return blocks, _pool(), m.fc.in_features


def _vgg_parts(m):
    # One block per max-pool: the conv layers of a resolution and their pool.
    blocks, current = [], []
    for layer in m.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    convs = [c for c in m.features if isinstance(c, nn.Conv2d)]
    return blocks, _pool(), convs[-1].out_channels


def _group_by_out_channels(layers):
    """Consecutive inverted-residual blocks of equal width form one stage."""
    groups = itertools.groupby(layers, key=lambda block: block.out_channels)
    return [nn.Sequential(*group) for _, group in groups]


def _mobilenet_parts(m):
    stem, *body, last_conv = m.features
    stages = _group_by_out_channels(body)
    # The final 1x1 convolution widens the last stage's output; it trains with it.
    stages[-1] = nn.Sequential(*stages[-1], last_conv)
    return [stem, *stages], _pool(), last_conv.out_channels


def _efficientnet_parts(m):
    stem, *stages, last_conv = m.features
    stages[-1] = nn.Sequential(stages[-1], last_conv)
    return [stem, *stages], _pool(), last_conv.out_channels


def _convnext_parts(m):
    stem, *rest = m.features
    # features alternates stage, downsample, stage, ...: pair each
    # downsampling layer with the stage that follows it.
    blocks = [stem, rest[0]]
    blocks += [nn.Sequential(rest[i], rest[i + 1]) for i in range(1, len(rest), 2)]
    norm, flatten, linear = m.classifier
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), norm, flatten)
    return blocks, neck, linear.in_features


def _regnet_parts(m):
    return [m.stem, *m.trunk_output], _pool(), m.fc.in_features


def _densenet_parts(m):
    f = m.features
    stem = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0)
    blocks = [
        stem,
        nn.Sequential(f.denseblock1, f.transition1),
        nn.Sequential(f.denseblock2, f.transition2),
        nn.Sequential(f.denseblock3, f.transition3),
        nn.Sequential(f.denseblock4, f.norm5),
    ]
    neck = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return blocks, neck, m.classifier.in_features


def _make_torchvision_builder(name, split, classifier):
    def build(weights):
        enum_cls = get_model_weights(name)
        model = get_model(name, weights=None)
        if weights is None:
            # Random init; preprocessing still follows the default weights.
            prep_source, weights_id = enum_cls.DEFAULT, "random"
        elif is_weights_path(weights):
            load_backbone_state(model, weights, (classifier,))
            prep_source = enum_cls.DEFAULT
            weights_id = weights_file_id(weights)
        else:
            prep_source = _weights_member(enum_cls, weights, name)
            load_torchvision_weights(model, prep_source, name)
            weights_id = f"torchvision:{prep_source}"
        blocks, neck, dim = split(model)
        prep = Preprocessing.from_torchvision(prep_source)
        return BackboneParts(blocks, neck, dim, prep, weights_id)

    return build


def _make_torchvision_description(name):
    def describe():
        default = get_model_weights(name).DEFAULT
        input_size = Preprocessing.from_torchvision(default).crop_size
        return input_size, hub_checkpoint(default.url).is_file()

    return describe


def _weights_member(enum_cls, weights, model_name):
    if weights == "DEFAULT":
        return enum_cls.DEFAULT
    valid = ["DEFAULT", *(m for m in enum_cls.__members__ if m != "DEFAULT")]
    member = str(weights).split(".")[-1]
    if member not in enum_cls.__members__:
        raise ValueError(
            f"Unknown weights {weights!r} for backbone {model_name!r}. Valid "
            f"names: {valid}, None for random initialisation, or a path to a "
            "state-dict file."
        )
    return enum_cls[member]


# family: (how to cut it, the top-level name of its classifier, models)
_FAMILIES = {
    "resnet": (_resnet_parts, "fc", ["resnet18", "resnet34", "resnet50", "resnet101"]),
    "vgg": (_vgg_parts, "classifier", ["vgg11", "vgg11_bn", "vgg16", "vgg16_bn"]),
    "mobilenet": (
        _mobilenet_parts,
        "classifier",
        ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"],
    ),
    "efficientnet": (
        _efficientnet_parts,
        "classifier",
        [
            "efficientnet_b0",
            "efficientnet_b1",
            "efficientnet_b2",
            "efficientnet_b3",
            "efficientnet_v2_s",
        ],
    ),
    "convnext": (_convnext_parts, "classifier", ["convnext_tiny", "convnext_small"]),
    "regnet": (_regnet_parts, "fc", ["regnet_y_400mf", "regnet_y_800mf"]),
    "densenet": (_densenet_parts, "classifier", ["densenet121"]),
}

# Block counts are not listed: the registry counts them from the cut itself.
for _family, (_split, _classifier, _names) in _FAMILIES.items():
    for _name in _names:
        register_backbone(
            BackboneSpec(
                name=_name,
                family=_family,
                build=_make_torchvision_builder(_name, _split, _classifier),
                describe=_make_torchvision_description(_name),
            )
        )
