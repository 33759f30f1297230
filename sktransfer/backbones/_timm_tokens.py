"""Cut a timm vision transformer (ViT, DeiT, DINOv2, EVA) into blocks.

These models do not chain their children: ``forward_features`` turns patches
into tokens, adds class/register tokens and position embeddings, runs the
transformer blocks (EVA passes them rotary embeddings) and a final norm;
``forward_head`` pools the tokens. They are cut into

* a prefix: the model itself with its blocks and final norm taken out, so
  its own ``forward_features`` computes exactly the token embedding (patch
  embedding, class, register and distillation tokens, position embeddings,
  ``norm_pre``);
* one block per transformer block, the final norm joined to the last one;
* a neck: a second shell keeping only the pooling, ``fc_norm`` and
  ``head_drop``, whose ``forward_head(x, pre_logits=True)`` gives the
  embedding.

Only public timm methods run, so every pooling variant (class token,
average, attention pooling, DeiT's two tokens) is timm's own code. The cut is
checked against ``model(x)`` like every other cut.
"""

import copy
from collections import OrderedDict

import torch
from torch import nn

__all__ = ["cut_token_transformer", "fixed_image_size", "is_token_transformer"]

# Children used only by ``forward_head``: the neck keeps them, the prefix
# does not.
_HEAD_CHILDREN = ("attn_pool", "fc_norm", "head_drop", "head", "head_dist")


def is_token_transformer(model):
    """Whether ``model`` is a timm transformer over a sequence of tokens.

    That is: a patch embedding, a container of blocks, a final ``norm``, and
    the ``forward_features`` / ``forward_head`` pair.
    """
    return (
        all(hasattr(model, a) for a in ("patch_embed", "norm", "forward_head"))
        and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList))
        and len(model.blocks) > 0
    )


def fixed_image_size(model):
    """``(height, width)`` a timm model's position embeddings are fixed to.

    None when it takes any size: no patch embedding, or one that resamples
    its position embeddings (``dynamic_img_size``) or is not strict.
    """
    patch_embed = getattr(model, "patch_embed", None)
    fixed = getattr(patch_embed, "strict_img_size", False) and not getattr(
        model, "dynamic_img_size", False
    )
    size = getattr(patch_embed, "img_size", None)
    return tuple(size) if fixed and size else None


class TokenEmbedding(nn.Module):
    """Image to tokens: the model's ``forward_features`` without its blocks."""

    def __init__(self, shell):
        super().__init__()
        self.shell = shell

    def forward(self, x):
        self._check_size(x)
        return self.shell.forward_features(x)

    def _check_size(self, x):
        if torch.jit.is_tracing():  # export traces at the fitted size
            return
        expected = fixed_image_size(self.shell)
        if expected and tuple(x.shape[-2:]) != expected:
            raise ValueError(
                f"This transformer's position embeddings are for "
                f"{expected[0]}x{expected[1]} images, but it was given "
                f"{x.shape[-2]}x{x.shape[-1]}. Leave image_size=None (or set it "
                f"to {expected[0]})."
            )


class TokenPool(nn.Module):
    """Tokens to the embedding: the model's ``forward_head(pre_logits=True)``."""

    def __init__(self, shell):
        super().__init__()
        self.shell = shell

    def forward(self, x):
        return self.shell.forward_head(x, pre_logits=True)


class RotaryBlock(nn.Module):
    """An EVA block with the rotary position embedding it is always given.

    The embedding depends only on the token grid, fixed by the input size, so
    it is computed once (a buffer, not saved: it is rebuilt with the model).
    """

    def __init__(self, block, rope):
        super().__init__()
        self.block = block
        self.register_buffer("rope", rope, persistent=False)

    def forward(self, x):
        return self.block(x, rope=self.rope)


def _rotary_embeddings(model, n_blocks):
    """EVA's rotary embedding for each block, or None for every block."""
    rope = getattr(model, "rope", None)
    if rope is None:
        return [None] * n_blocks
    if hasattr(rope, "feat_shape"):
        embed = rope.get_embed()
    else:
        embed = rope.get_embed(shape=model.patch_embed.grid_size)
    if getattr(model, "rope_mixed", False):
        return [embed[i] for i in range(n_blocks)]  # one per depth
    return [embed] * n_blocks


def _strip(shell, keep):
    """Replace the children and own parameters of ``shell`` not in ``keep``."""
    for name, _ in list(shell.named_children()):
        if name not in keep:
            setattr(shell, name, nn.Identity())
    for name, _ in list(shell.named_parameters(recurse=False)):
        if name not in keep:
            setattr(shell, name, None)


def cut_token_transformer(model):
    """Split a timm transformer (``num_classes=0``) into blocks and neck.

    ``model`` is taken apart: its modules move into the returned blocks.

    Returns
    -------
    blocks : list of torch.nn.Module
        The token embedding, then one module per transformer block; the last
        one ends with the final norm.
    neck : torch.nn.Module
        Pooling of the tokens into the embedding.
    """
    transformer_blocks = list(model.blocks)
    final_norm = model.norm
    ropes = _rotary_embeddings(model, len(transformer_blocks))
    model.blocks = type(model.blocks)()
    model.norm = nn.Identity()
    head_shell = copy.deepcopy(model)
    _strip(head_shell, keep=_HEAD_CHILDREN)
    # ``head_shell`` owns the pooling parts now; the prefix must not run them.
    for name in _HEAD_CHILDREN:
        if getattr(model, name, None) is not None:
            setattr(model, name, nn.Identity())
    blocks = [TokenEmbedding(model)]
    for block, rope in zip(transformer_blocks, ropes):
        blocks.append(block if rope is None else RotaryBlock(block, rope))
    blocks[-1] = nn.Sequential(OrderedDict(block=blocks[-1], norm=final_norm))
    return blocks, TokenPool(head_shell)
