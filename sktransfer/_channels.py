"""One-channel input: a pretrained RGB stem adapted to grey images.

With ``channels="grey"`` an image becomes one luminance channel instead of
three copies of it, and the first convolution's filters are summed over
their input channels, as timm does for ``in_chans=1``. Unlike a plain sum,
each filter is first divided by its channel's standard deviation and the
channel means are folded into the bias, so that away from the zero-padded
border the stem computes exactly what it computes on the grey image
replicated into three normalised channels. Only the border differs: the
RGB path pads each channel with its own mean, one channel can pad with one.
"""

import dataclasses

import torch
from torch import nn

from ._compat import StrOptions

__all__ = ["CHANNELS_CONSTRAINT", "adapt_stem_to_grey", "grey_preprocessing"]

#: ``_parameter_constraints`` entry for an estimator's ``channels`` parameter.
CHANNELS_CONSTRAINT = [StrOptions({"rgb", "grey"})]


def grey_preprocessing(prep):
    """``prep`` for one channel: the mean of its means and of its stds."""
    return dataclasses.replace(
        prep,
        channels=1,
        mean=(sum(prep.mean) / len(prep.mean),),
        std=(sum(prep.std) / len(prep.std),),
    )


def _first_rgb_conv(module):
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d) and layer.in_channels == 3:
            return name, layer
    return None, None


@torch.no_grad()
def adapt_stem_to_grey(stem, rgb_prep, backbone="the backbone"):
    """Make ``stem``'s first 3-channel convolution take one channel, in place.

    Parameters
    ----------
    stem : torch.nn.Module
        The first block of a backbone.
    rgb_prep : Preprocessing
        The three-channel normalisation the weights were trained with.
    backbone : str
        Named in the error when ``stem`` has no such convolution.

    Returns
    -------
    grey_prep : Preprocessing
        The one-channel normalisation the adapted stem expects.
    """
    name, conv = _first_rgb_conv(stem)
    if conv is None or conv.groups != 1:
        raise ValueError(
            f"channels='grey' needs a first convolution with 3 input "
            f"channels, which {backbone} does not have. Use channels='rgb'."
        )
    grey = grey_preprocessing(rgb_prep)
    (m,), (s,) = grey.mean, grey.std
    mean = torch.tensor(rgb_prep.mean, dtype=conv.weight.dtype)
    std = torch.tensor(rgb_prep.std, dtype=conv.weight.dtype)
    w = conv.weight  # (out, 3, kh, kw)
    # Input g normalised once, x = (g - m) / s, must give the same sum as
    # the three channels (g - mean_c) / std_c: scale each filter by s / std_c
    # and move the difference of offsets into the bias.
    per_channel = w / std.view(1, 3, 1, 1)
    new_weight = (per_channel * s).sum(dim=1, keepdim=True)
    offset = (per_channel * (m - mean).view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    bias = offset if conv.bias is None else conv.bias + offset
    conv.weight = nn.Parameter(new_weight, requires_grad=w.requires_grad)
    conv.bias = nn.Parameter(bias, requires_grad=w.requires_grad)
    conv.in_channels = 1
    return grey
