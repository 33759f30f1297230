"""Images already in memory: Pillow images and numpy arrays of pixels.

An array holds one image as ``(h, w)`` or ``(h, w, c)`` with ``c`` in
{1, 3, 4} (grey, RGB, RGBA), either ``uint8`` (0-255) or floating point with
values in [0, 1], the convention of scikit-image and of ``ToTensor``. Floats
are scaled by 255 and rounded. Other integer types are refused rather than
guessed at: a ``uint16`` array may hold 12-, 14- or 16-bit data.

What can be checked without reading pixels (dtype, shape) is checked when
``X`` is validated and raises at once; what needs the pixels (NaN, floats
outside [0, 1], a lazily opened image whose file has gone) is an
:class:`~sktransfer.ImageLoadError` when the image is opened, so it goes
through ``on_bad_image`` like an unreadable file.

Their cache key is a SHA-256 of the pixels with everything that changes
how they are read (dtype, shape; mode, size, palette, transparency and EXIF
orientation of a Pillow image): never a path, and nothing is written to
disk but the features.
"""

import hashlib

import numpy as np
from PIL import Image

from ._images import ImageLoadError, rgb_from_pil

__all__ = [
    "check_image_array",
    "in_memory_fingerprint",
    "open_in_memory",
]

_CHANNELS = (1, 3, 4)
_ORIENTATION = 0x0112  # EXIF tag


def _dtype_error(dtype, where):
    return TypeError(
        f"{where} has dtype {dtype}; image arrays must be uint8 (values 0-255) "
        "or floating point with values in [0, 1]. Convert it first, e.g. "
        "a.astype(np.uint8) for integers in 0-255, or a / 65535 for 16-bit "
        "images."
    )


def check_dtype(dtype, where):
    """Refuse a dtype that is neither uint8 nor floating point."""
    if not (dtype == np.uint8 or np.issubdtype(dtype, np.floating)):
        raise _dtype_error(dtype, where)


def check_image_shape(shape, where, layout):
    """Refuse a shape of the form ``layout`` (e.g. ``"(n, h, w, c)"``) whose
    channel count is not 1, 3 or 4, or with an empty side."""
    has_channels = layout.endswith("c)")
    if has_channels and shape[-1] not in _CHANNELS:
        hint = ""
        if shape[-3] in _CHANNELS:
            hint = (
                " It looks channels-first (as torch stores images); move the "
                "channel axis last, e.g. np.moveaxis(a, -3, -1)."
            )
        raise ValueError(
            f"{where} has shape {shape}; expected {layout} with c in "
            f"{{1, 3, 4}} (grey, RGB, RGBA), got c={shape[-1]}.{hint}"
        )
    sides = shape[-3:-1] if has_channels else shape[-2:]
    if 0 in sides:
        raise ValueError(
            f"{where} has shape {shape}, {layout}: an image needs at least "
            "one pixel."
        )


def check_image_array(a, where):
    """Refuse an array that cannot hold one image, before reading pixels.

    ``where`` names it in the message, e.g. ``"X[3]"``.
    """
    if a.ndim not in (2, 3):
        raise ValueError(
            f"{where} is an array of shape {a.shape}, not an image: one image "
            "is (h, w) or (h, w, c) with c in {1, 3, 4}."
        )
    check_dtype(a.dtype, where)
    check_image_shape(a.shape, where, "(h, w)" if a.ndim == 2 else "(h, w, c)")


def _to_uint8(a, name):
    if a.dtype == np.uint8:
        return a
    if not np.isfinite(a).all():
        raise ImageLoadError(name, "float pixel values include NaN or infinity")
    low, high = float(a.min()), float(a.max())
    if low < 0 or high > 1:
        raise ImageLoadError(
            name,
            f"float pixel values must lie in [0, 1], found {low:.4g} to "
            f"{high:.4g}. For values in 0-255, pass a uint8 array "
            "(a.astype(np.uint8)).",
        )
    return np.rint(a * 255.0).astype(np.uint8)


def _array_to_pil(a, name):
    a = _to_uint8(a, name)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a))


def open_in_memory(item, name, *, max_image_pixels=None, intensity="auto"):
    """A Pillow image or image array as upright 8-bit RGB.

    Alpha is composited on white and the pixel limit applies, as for files.

    Raises
    ------
    ImageLoadError
        With ``name`` and the reason.
    """
    if isinstance(item, np.ndarray):
        item = _array_to_pil(item, name)
    return rgb_from_pil(
        item, name, max_image_pixels=max_image_pixels, intensity=intensity
    )


def in_memory_fingerprint(item):
    """``pixels:sha256:...`` of an image array or Pillow image, or None.

    None when the pixels cannot be read (an image whose file has gone): the
    image is then not cached, and opening it reports why.
    """
    digest = hashlib.sha256()
    if isinstance(item, np.ndarray):
        digest.update(f"array|{item.dtype.str}|{item.shape}|".encode())
        digest.update(memoryview(np.ascontiguousarray(item)).cast("B"))
        return f"pixels:sha256:{digest.hexdigest()}"
    try:
        item.load()
        palette = item.palette
        orientation = item.getexif().get(_ORIENTATION)
        digest.update(
            f"pil|{item.mode}|{item.size}|{orientation}|"
            f"{item.info.get('transparency')!r}|"
            f"{palette.mode if palette else None}|".encode()
        )
        if palette is not None:
            digest.update(palette.tobytes())
        digest.update(b"|")
        digest.update(item.tobytes())
    except Exception:  # whatever the reason, uncached; opening it reports why
        return None
    return f"pixels:sha256:{digest.hexdigest()}"
