"""The torch module: a frozen prefix, a trainable suffix and a new head.

``TransferModule(x) = suffix(frozen(x))`` where ``suffix`` holds the unfrozen
blocks (and the pooling neck) followed by the head. Because ``frozen`` is
never trained, its output can be computed once and cached; the suffix alone
is then trained on those features.
"""

import torch
from torch import nn

from ._compat import BatchNormBase
from ._runtime import autocast_context, feature_dtype

__all__ = [
    "TrainableSuffix",
    "TransferModule",
    "build_head",
    "build_transfer_module",
    "frozen_prefix",
]


def build_head(in_features, n_classes, hidden_layer_sizes=(), dropout=0.0):
    """Linear classifier, or an MLP with ReLU and dropout between layers."""
    layers = []
    for width in hidden_layer_sizes:
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_features, n_classes))
    return nn.Sequential(*layers)


class TrainableSuffix(nn.Module):
    """Unfrozen blocks and neck (``trainable``) followed by the ``head``.

    Parameters
    ----------
    trainable : torch.nn.Module
        Unfrozen backbone blocks and the neck (may have no parameters).
    head : torch.nn.Module
        The new classifier.
    freeze_bn_stats : bool
        Keep BatchNorm layers in ``trainable`` in eval mode while training,
        so their pretrained running statistics are used and not updated by
        small, unrepresentative batches. Their affine parameters still train.
    """

    def __init__(self, trainable, head, freeze_bn_stats):
        super().__init__()
        self.trainable = trainable
        self.head = head
        self.freeze_bn_stats = freeze_bn_stats

    def train(self, mode=True):
        super().train(mode)
        if self.freeze_bn_stats:
            for module in self.trainable.modules():
                if isinstance(module, BatchNormBase):
                    module.eval()
        return self

    def lr_scales(self, backbone_lr_ratio, layer_decay=1.0):
        """Learning-rate multiplier of each parameter, keyed by ``id``.

        The head trains at the full rate, the last unfrozen block (and the
        neck) at ``backbone_lr_ratio`` of it, and each block before it at
        ``layer_decay`` times the rate of the block after it: layers nearer
        the input hold more general features and move less (layer-wise
        learning-rate decay, as timm's ``layer_decay``). The optimizer's
        groups are built from these objects, so no parameter name is relied
        on.
        """
        scales = {id(p): 1.0 for p in self.head.parameters()}
        layers = list(self.trainable)
        n_blocks = max(len(layers) - 1, 0)  # the last layer is the neck
        for i, layer in enumerate(layers):
            depth = max(n_blocks - 1 - i, 0)
            for p in layer.parameters():
                scales[id(p)] = backbone_lr_ratio * layer_decay**depth
        return scales

    def embed(self, features):
        """Penultimate representation: the input of the head's last layer."""
        x = self.trainable(features.float())
        for layer in list(self.head)[:-1]:
            x = layer(x)
        return x

    def forward(self, features):
        # Cached features may be stored in bf16/fp16; the trained part
        # computes in float32 (under autocast on CUDA), one batch at a time.
        return self.head(self.trainable(features.float()))


class TransferModule(nn.Module):
    """Frozen backbone prefix followed by a :class:`TrainableSuffix`.

    The prefix has ``requires_grad=False`` and stays in eval mode whatever
    ``train()`` is asked for: skorch switches the whole module to training
    mode at every step, which would otherwise let frozen BatchNorm running
    statistics drift.

    ``frozen_dtype`` is the autocast dtype of the prefix (None for float32).
    The prefix runs in it here exactly as when its output is extracted for
    the feature cache, so a fit gives the same model whether its features
    came from the cache or were computed on the fly.
    """

    def __init__(self, frozen, suffix, frozen_dtype=None):
        super().__init__()
        self.frozen = frozen
        self.suffix = suffix
        self.frozen_dtype = frozen_dtype
        for param in self.frozen.parameters():
            param.requires_grad_(False)
        self.frozen.eval()

    def train(self, mode=True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x):
        with torch.no_grad(), autocast_context(x.device, self.frozen_dtype):
            features = self.frozen(x)
        # Rounded to the dtype the cache stores them in, so a fit gives the
        # same model with or without the cache.
        features = features.to(feature_dtype(self.frozen_dtype))
        return self.suffix(features)


def frozen_prefix(parts, n_frozen):
    """The first ``n_frozen`` blocks, frozen; the neck too when all are frozen.

    Every estimator builds its frozen part here, so a feature extractor and a
    classifier with ``unfreeze=0`` run (and cache) the very same layers.
    """
    layers = list(parts.blocks[:n_frozen])
    # With every block frozen the neck is frozen too, so the cached features
    # are the small pooled embedding rather than the last feature map.
    if n_frozen == len(parts.blocks):
        layers.append(parts.neck)
    module = nn.Sequential(*layers)
    for param in module.parameters():
        param.requires_grad_(False)
    return module.eval()


def build_transfer_module(
    parts, n_unfrozen, n_classes, *, hidden_layer_sizes=(), dropout=0.0,
    freeze_bn_stats=True, frozen_dtype=None,
):
    """Assemble a :class:`TransferModule` from a built backbone.

    Parameters
    ----------
    parts : BackboneParts
        The backbone's blocks, neck and feature width.
    n_unfrozen : int
        How many of the last blocks train (0 to ``len(parts.blocks)``).
    n_classes : int
        Output width of the head.
    """
    n_frozen = len(parts.blocks) - n_unfrozen
    trainable_layers = list(parts.blocks[n_frozen:])
    if n_unfrozen > 0:
        trainable_layers.append(parts.neck)
    head = build_head(parts.feature_dim, n_classes, hidden_layer_sizes, dropout)
    suffix = TrainableSuffix(nn.Sequential(*trainable_layers), head, freeze_bn_stats)
    return TransferModule(frozen_prefix(parts, n_frozen), suffix, frozen_dtype)
