"""Class-activation maps of a fitted transfer module (Grad-CAM and HiResCAM).

The maps are computed here with torch's autograd, in a few lines, rather
than through pytorch-grad-cam (``grad-cam`` on PyPI) or captum. Both
install, but neither fits the module's layout: ``TransferModule.forward``
runs the frozen blocks under ``torch.no_grad()``, so a library that hooks a
layer and back-propagates through ``model(x)`` gets no gradient whenever
the layer is frozen. Running the blocks ourselves, the part before the
chosen block stays under ``no_grad`` (no graph is kept for it), the chosen
block's output becomes the leaf of the graph, and one ``autograd.grad``
call gives the gradient of the class scores with respect to it, without
touching any parameter's ``.grad``. pytorch-grad-cam would also add
OpenCV and ttach to the dependencies, for a computation of ten lines.

Two weightings of the activations ``A`` (channels ``k``) by the gradient
``G`` of the class score are offered:

- ``"hirescam"`` (Draelos & Carin, 2020): ``sum_k G_k * A_k``, position by
  position. It is the default because it provably shows the locations that
  raised the score: for a block followed by pooling and a linear head, its
  map summed over positions is the class score (less the bias), and with
  more layers it is the first-order contribution of each position.
- ``"gradcam"`` (Selvaraju et al., 2017): ``sum_k mean(G_k) * A_k``, the
  gradient averaged over positions first. That average can light up regions
  the score does not depend on when spatial layers follow the chosen block.

For the last block, which global pooling follows, the gradient is the same
at every position and both give the same map (CAM, Zhou et al., 2016).
Negative values are clipped (only evidence *for* the class is shown), each
map is scaled to a maximum of 1 and resized to the network's input.
"""

import math

import torch
from torch.nn import functional as F

from .._runtime import autocast_context
from ..backbones._registry import feature_layout
from ..backbones._timm_tokens import TokenEmbedding

__all__ = ["METHODS", "class_activation_maps", "model_blocks", "resolve_layer"]

METHODS = ("hirescam", "gradcam")

# Class and register tokens come before the patch tokens in ViTs (timm,
# torchvision); more than this many extra tokens is taken as a sign that the
# activations are not a square grid of patches at all.
_MAX_PREFIX_TOKENS = 16


def model_blocks(estimator):
    """The fitted model's backbone blocks in order, the neck and the head.

    Returns
    -------
    blocks : list of torch.nn.Module
    n_frozen : int
        How many of ``blocks`` are frozen (the first ones).
    neck, head : torch.nn.Module
    """
    model = estimator.model_
    layers = [*model.frozen, *model.suffix.trainable]
    # The neck closes the frozen part when every block is frozen, else the
    # trainable one (build_transfer_module); either way it comes last.
    blocks, neck = layers[:-1], layers[-1]
    if len(blocks) != estimator.backbone_n_blocks_:
        raise RuntimeError(
            f"The fitted model has {len(blocks)} blocks before its neck, but "
            f"its backbone has {estimator.backbone_n_blocks_}; it cannot be "
            "split into blocks for class-activation maps."
        )
    return blocks, estimator.n_frozen_blocks_, neck, model.suffix.head


def resolve_layer(layer, blocks):
    """Index of the block named by ``layer`` in ``blocks``.

    None is the last block, except in a vision transformer: there the last
    block is followed by pooling that may read the class token alone, so its
    patch tokens get no gradient; the default is then the block before, the
    input of the last transformer block (the usual choice for ViTs).
    """
    n_blocks = len(blocks)
    if layer is None:
        if isinstance(blocks[0], TokenEmbedding) and n_blocks > 2:
            return n_blocks - 2
        return n_blocks - 1
    if isinstance(layer, bool) or not isinstance(layer, int) or not (
        -n_blocks <= layer < n_blocks
    ):
        raise ValueError(
            f"layer must be None (the last block) or a block index from "
            f"{-n_blocks} to {n_blocks - 1} (0 is the stem); got {layer!r}."
        )
    return layer % n_blocks


def _as_grid(activations, layer, layout):
    """``(N, C, H, W)`` from a conv map, or from ViT tokens ``(N, T, C)``.

    ``layout`` is the block's :func:`feature_layout` (Swin outputs NHWC).
    """
    if activations.ndim == 4:
        if layout == "NHWC":
            return activations.permute(0, 3, 1, 2)
        return activations
    if activations.ndim == 3:
        n_tokens = activations.shape[1]
        side = math.isqrt(n_tokens)
        prefix = n_tokens - side * side
        if side == 0 or prefix > _MAX_PREFIX_TOKENS:
            raise ValueError(
                f"Block {layer} outputs {n_tokens} tokens, which are not a "
                "square grid of patches after at most "
                f"{_MAX_PREFIX_TOKENS} class/register tokens; choose another "
                "block with layer=..."
            )
        patches = activations[:, prefix:]
        return patches.transpose(1, 2).reshape(
            patches.shape[0], patches.shape[2], side, side
        )
    raise ValueError(
        f"Block {layer} outputs activations of shape "
        f"{tuple(activations.shape)}, which have no spatial layout; "
        "class-activation maps need feature maps (N, C, H, W) or tokens "
        "(N, T, C). Choose an earlier block with layer=..."
    )


def class_activation_maps(estimator, inputs, targets, *, layer=None,
                          method="hirescam", batch_size=32):
    """Class-activation maps of ``targets`` over one block of the backbone.

    Parameters
    ----------
    estimator : PretrainedCNNClassifier
        Fitted; its ``model_`` runs on ``device_``.
    inputs : torch.Tensor of shape (n, 3, S, S)
        Normalised images.
    targets : array-like of int of shape (n,) or None
        Class index whose score is explained, per image; None explains the
        class of highest score.
    layer : int or None
        Block index; None is the last block.
    method : {"hirescam", "gradcam"}
    batch_size : int
        Images per forward and backward pass.

    Returns
    -------
    maps : ndarray of shape (n, S, S)
        In [0, 1], each with maximum 1 (or all 0 without positive evidence).
    proba : ndarray of shape (n, n_classes)
        Class probabilities of the same forward passes.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    blocks, n_frozen, neck, head = model_blocks(estimator)
    k = resolve_layer(layer, blocks)
    layout = feature_layout(blocks[k])
    device = torch.device(estimator.device_)
    estimator.model_.eval()
    if targets is not None:
        targets = torch.as_tensor(targets, dtype=torch.long)
    maps, probas = [], []
    for start in range(0, len(inputs), batch_size):
        x = inputs[start : start + batch_size].to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            # The frozen blocks run in the precision they run in for predict.
            with autocast_context(device, estimator.frozen_dtype_):
                for block in blocks[: min(k + 1, n_frozen)]:
                    x = block(x)
            x = x.float()
            for block in blocks[n_frozen : k + 1]:
                x = block(x)
        activations = x.detach().requires_grad_(True)
        acts = _as_grid(activations.detach(), k, layout)  # non-spatial raises
        with torch.enable_grad():
            # A clone, since the next layer may work in place (ReLU) and the
            # leaf must keep the block's output.
            x = activations.clone()
            for block in blocks[k + 1 :]:
                x = block(x)
            logits = head(neck(x)).float()
            if targets is None:
                batch_targets = logits.detach().argmax(dim=1)
            else:
                batch_targets = targets[start : start + len(logits)].to(device)
            scores = logits.gather(1, batch_targets[:, None]).sum()
            (grads,) = torch.autograd.grad(scores, activations)
        grads = _as_grid(grads, k, layout)
        if method == "gradcam":
            grads = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((grads * acts).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear",
                            align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
        maps.append(torch.where(peak > 0, cam / peak.clamp_min(1e-30), 0.0).cpu())
        probas.append(torch.softmax(logits.detach().double(), dim=1).cpu())
    return torch.cat(maps).numpy(), torch.cat(probas).numpy()
