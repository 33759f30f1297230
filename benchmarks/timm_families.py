"""Which timm architectures sktransfer can cut, with their blocks and cut check.

For each model (random weights, timm's evaluation input size) it builds the
backbone as ``"timm/<name>"`` does, runs the blocks in order then the neck,
and prints the largest absolute difference from ``model(x)`` of a model built
with the same seed, or the error for a refused one. The same check runs
inside every build, to 1e-4; this script shows the margin.

Usage::

    python benchmarks/timm_families.py [--models name,name,...]
"""

import argparse
import time
import warnings

import torch
from torch import nn

from sktransfer import get_backbone

MODELS = [
    # convolutional and hierarchical: one block per stage
    "resnet10t", "convnext_atto", "convnextv2_atto", "efficientnet_b0",
    "swin_tiny_patch4_window7_224", "swinv2_tiny_window8_256",
    "maxvit_tiny_tf_224", "efficientvit_b0", "fastvit_t8", "mobilevitv2_050",
    "tiny_vit_5m_224", "mambaout_femto",
    # token transformers: embedding, one block per transformer block
    "vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224",
    "deit3_small_patch16_224", "vit_small_patch14_dinov2",
    "vit_small_patch14_reg4_dinov2", "eva02_tiny_patch14_224",
    "beit_base_patch16_224", "vit_base_patch16_clip_224",
    "vit_base_patch16_siglip_224", "flexivit_small",
    "vit_relpos_small_patch16_rpn_224",
    # refused: the forward pass does more than chain the blocks
    "cait_xxs24_224", "xcit_nano_12_p16_224", "pit_ti_224", "levit_128",
    "crossvit_tiny_240", "hiera_tiny_224",
]


def check(name):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    torch.manual_seed(0)
    parts = get_backbone(f"timm/{name}").build(None)
    size = parts.preprocessing.crop_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    for piece in [*parts.blocks, parts.neck]:
        piece.eval()
    with torch.no_grad():
        diff = (parts.neck(nn.Sequential(*parts.blocks)(x)) - model(x)).abs().max()
    return type(model).__name__, len(parts.blocks), size, float(diff)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    import timm

    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"timm {timm.__version__}, torch {torch.__version__}\n")
    print("| model | class | blocks | input | cut check: max abs diff |")
    print("|---|---|---:|---:|---|")
    for name in args.models.split(","):
        start = time.perf_counter()
        try:
            cls, n_blocks, size, diff = check(name)
            print(f"| {name} | {cls} | {n_blocks} | {size} | {diff:.1e} "
                  f"({time.perf_counter() - start:.1f} s) |", flush=True)
        except ValueError as exc:
            reason = str(exc).split("; ", 1)[1].split(". Use ")[0]
            print(f"| {name} | | | | refused: {reason} |", flush=True)


if __name__ == "__main__":
    main()
