"""Per-image size of the cached frozen features, per registered backbone.

Computed from output shapes with ``weights=None`` at each backbone's default
crop size; prints a Markdown table. ``python benchmarks/cache_sizes.py``.
"""

import torch

from sktransfer import get_backbone, list_backbones
from sktransfer._frozen import format_bytes
from sktransfer._module import build_transfer_module


def frozen_shape(name, unfreeze):
    parts = get_backbone(name).build(None)
    module = build_transfer_module(parts, unfreeze, n_classes=2)
    size = parts.preprocessing.crop_size
    with torch.inference_mode():
        out = module.frozen(torch.zeros(1, 3, size, size))
    return size, tuple(out.shape[1:])


def main():
    print("| backbone | crop | unfreeze=0 | unfreeze=1 (shape) "
          "| 1,000 images at unfreeze=1 |")
    print("|---|---|---|---|---|")
    for name in list_backbones():
        size, pooled = frozen_shape(name, 0)
        _, cut = frozen_shape(name, 1)
        n0, n1 = 4 * pooled[0], 4 * torch.Size(cut).numel()
        print(f"| {name} | {size} | {format_bytes(n0)} | {format_bytes(n1)} "
              f"{'x'.join(map(str, cut))} | {format_bytes(1000 * n1)} |")


if __name__ == "__main__":
    main()
