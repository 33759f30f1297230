"""How pixel values of any bit depth become the 8 bits a backbone expects.

Pretrained weights saw 8-bit photographs. A 16-bit PNG or TIFF often holds
fewer significant bits (a 12-bit sensor writes 0..4095): dividing by 257, as
for a full 16-bit range, leaves it nearly black. The ``intensity`` parameter
chooses the mapping:

``"auto"``
    8-bit images are unchanged. High-bit-depth images are scaled by their
    significant bits: the PNG ``sBIT`` chunk when present, else the smallest
    of 10, 12, 14 or 16 bits that holds the image's largest value.
``"bit_depth"``
    Scale by the storage bit depth (16-bit values divided by 257).
``"minmax"``
    Per image, the darkest value becomes 0 and the brightest 255.
``"percentile"``
    Per image, the 1st percentile becomes 0 and the 99th 255, clipping the
    rest (robust to a few hot pixels).
``(low, high)``
    A fixed window in the file's own units: ``low`` becomes 0 and ``high``
    255, for every image (a CT window in Hounsfield units, say).

The per-image and window policies apply to 8-bit images too, on all colour
channels at once so that hues are kept.
"""

import math
import numbers
import struct

import numpy as np

from ._compat import StrOptions

__all__ = [
    "INTENSITY_CONSTRAINT",
    "INTENSITY_POLICIES",
    "check_intensity",
    "covering_bits",
    "png_significant_bits",
    "rescale_8bit",
    "to_uint8",
]

INTENSITY_POLICIES = ("auto", "bit_depth", "minmax", "percentile")

# Bit depths that cameras, scanners and modalities store in 16-bit files.
_COMMON_BITS = (10, 12, 14, 16)

_PERCENTILES = (1.0, 99.0)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


#: ``_parameter_constraints`` entry; :func:`check_intensity` checks tuples.
INTENSITY_CONSTRAINT = [StrOptions(set(INTENSITY_POLICIES)), tuple]


def check_intensity(value, owner="the estimator"):
    """Validate an ``intensity`` value beyond what its constraint checks.

    A tuple must be two finite numbers ``(low, high)`` with ``low < high``.

    Returns
    -------
    intensity : str or tuple of float
        The policy name, or the window as floats.

    Raises
    ------
    ValueError
        Naming the parameter, the value received and the accepted forms.
    """
    if isinstance(value, str):
        if value not in INTENSITY_POLICIES:
            raise ValueError(
                f"The 'intensity' parameter of {owner} must be one of "
                f"{INTENSITY_POLICIES} or a (low, high) tuple. Got {value!r}."
            )
        return value
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
        and value[0] < value[1]
    )
    if not ok:
        raise ValueError(
            f"The 'intensity' parameter of {owner} as a window must be a "
            "tuple of two finite numbers (low, high) with low < high, e.g. "
            f"(-1000, 400) for a CT lung window. Got {value!r}."
        )
    return (float(value[0]), float(value[1]))


def covering_bits(max_value):
    """Smallest of 10, 12, 14, 16 bits (or more) that holds ``max_value``."""
    for bits in _COMMON_BITS:
        if max_value <= 2**bits - 1:
            return bits
    return min(32, int(max_value).bit_length())


def png_significant_bits(fp):
    """Significant bits of a PNG from its ``sBIT`` chunk, or None.

    Pillow reads the chunk only to write it back, so it is looked up here:
    the chunks before the first ``IDAT`` are walked (a few reads of the
    header). ``fp`` is left at an unspecified position. For a colour image
    the largest channel's value is returned.
    """
    fp.seek(0)
    if fp.read(8) != _PNG_SIGNATURE:
        return None
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return None
        length, kind = struct.unpack(">I4s", head)
        if kind == b"sBIT":
            data = fp.read(length)
            return max(data) if data else None
        if kind in (b"IDAT", b"IEND"):
            return None
        fp.seek(length + 4, 1)  # the chunk's data and its CRC


def _window(policy, values, full_scale):
    """``(low, high)`` that ``policy`` maps to 0 and 255 for ``values``."""
    if isinstance(policy, tuple):
        return policy
    if policy in ("minmax", "percentile") and values.size == 0:
        return 0.0, 0.0
    if policy == "minmax":
        return float(values.min()), float(values.max())
    if policy == "percentile":
        low, high = np.percentile(values, _PERCENTILES)
        return float(low), float(high)
    return 0.0, float(full_scale)


def to_uint8(values, policy, *, full_scale):
    """``values`` mapped to ``uint8`` by ``policy``.

    Parameters
    ----------
    values : ndarray
        Pixel values, any numeric dtype and shape.
    policy : str or tuple
        ``"auto"`` and ``"bit_depth"`` scale ``[0, full_scale]`` to
        ``[0, 255]`` (the caller decides what full scale each means); see
        the module docstring for the others.
    full_scale : float
        The value that becomes 255 under ``"auto"`` and ``"bit_depth"``.

    Returns
    -------
    pixels : ndarray of uint8
        Same shape. An image whose window is empty (a flat image under
        ``"minmax"``) becomes 0 everywhere rather than dividing by zero.
    """
    values = np.asarray(values, dtype=np.float64)
    low, high = _window(policy, values, full_scale)
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def rescale_8bit(pixels, policy):
    """8-bit ``pixels`` under ``policy``: unchanged for ``"auto"``/``"bit_depth"``.

    Used on the RGB pixels of an ordinary image, so that per-image and window
    policies mean the same for 8-bit and high-bit-depth files.
    """
    if policy in ("auto", "bit_depth"):
        return pixels
    return to_uint8(pixels, policy, full_scale=255.0)
