"""Open image files safely and convert them to RGB the way a person sees them.

Pillow's global settings are never changed: formats come from an allow-list,
the pixel limit is checked here against a per-call value, and warning-sized
decompression bombs are treated as errors too.
"""

import contextlib
import math
import os
import stat
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps

from ._compat import pillow_openers
from ._dicom import check_dicom, is_dicom, read_dicom
from ._intensity import covering_bits, png_significant_bits, rescale_8bit, to_uint8
from ._warnings import user_stacklevel

__all__ = [
    "ALLOWED_FORMATS",
    "BadImagesError",
    "check_image_header",
    "check_pixel_limit",
    "ImageLoadError",
    "format_bad_images",
    "load_rgb_image",
    "read_image_header",
    "read_rgb_image",
    "rgb_from_pil",
    "upright_rgb",
    "warn_skipped",
]

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "MPO", "ICO")
# Read through pydicom (the "medical" extra), not Pillow: see _dicom.
OTHER_FORMATS = ("DICOM",)

# Fill colour for transparent pixels: white, as viewers and browsers show them.
_BACKGROUND = (255, 255, 255, 255)


class ImageLoadError(ValueError):
    """An image file that cannot be used, with its path and the reason."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def format_bad_images(errors, max_listed=20):
    """One message listing bad files, ``errors`` being (path, reason) pairs."""
    lines = [f"  {path}: {reason}" for path, reason in errors[:max_listed]]
    if len(errors) > max_listed:
        lines.append(f"  ... and {len(errors) - max_listed} more")
    return "\n".join(lines)


class BadImagesError(ImageLoadError):
    """Several image files cannot be used; ``errors`` lists (path, reason)."""

    def __init__(self, errors, action):
        self.errors = errors
        message = (
            f"{len(errors)} image file(s) cannot be used; {action}:\n"
            f"{format_bad_images(errors)}"
        )
        ValueError.__init__(self, message)
        self.path = errors[0][0]
        self.reason = message


def warn_skipped(errors, n_total):
    """Warn that ``errors`` (path, reason) of ``n_total`` images were skipped."""
    warnings.warn(
        f"Skipped {len(errors)} of {n_total} images that cannot be used "
        f"(on_bad_image='skip'):\n{format_bad_images(errors)}",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def default_max_image_pixels():
    """Pillow's pixel limit as currently configured (read, never written)."""
    return Image.MAX_IMAGE_PIXELS


def _check_regular_file(path):
    try:
        st = os.stat(path)  # follows links, so a dangling link is "missing"
    except FileNotFoundError:
        raise ImageLoadError(path, "file does not exist") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot access file ({exc.strerror})") from None
    except ValueError as exc:  # the OS refuses the name, e.g. a NUL byte in it
        raise ImageLoadError(path, f"invalid path ({exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(path, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(path, "is not a regular file (device, FIFO or socket)")
    if st.st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")


def _identify(fp, path):
    """Open ``fp`` with the first allowed Pillow plugin that accepts it.

    This mirrors ``Image.open(fp, formats=ALLOWED_FORMATS)`` without its
    global pixel-limit check, which is applied by the caller instead.
    """
    openers = pillow_openers()
    prefix = fp.read(16)
    for fmt in ALLOWED_FORMATS:
        # Some formats (MPO) have no opener of their own: JPEG's opens them.
        if fmt not in openers:
            continue
        factory, accept = openers[fmt]
        # As in Image.open: a str from ``accept`` is a refusal with a reason.
        verdict = True if accept is None else accept(prefix)
        if not verdict or isinstance(verdict, str):
            continue
        fp.seek(0)
        try:
            return factory(fp, os.fspath(path))
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise ImageLoadError(
        path,
        "not a readable image (unknown format or corrupt header); allowed "
        f"formats: {', '.join(ALLOWED_FORMATS + OTHER_FORMATS)}",
    )


def _draft_size(size, min_side):
    """Smallest size with the image's aspect whose shorter side is ``min_side``."""
    w, h = size
    ratio = min_side / min(w, h)
    return math.ceil(w * ratio), math.ceil(h * ratio)


def _is_high_bit_depth(img, values):
    # "I;16*" images are 16-bit; "I" may hold 8- or 16-bit data.
    return img.mode.startswith("I;16") or values.max(initial=0.0) > 255


def _high_bit_depth_to_l(img, intensity="bit_depth", significant_bits=None):
    """Scale 16-bit and 32-bit grey images to 8 bits instead of clipping them.

    ``intensity`` is the policy of :mod:`sktransfer._intensity`;
    ``significant_bits`` (a PNG's ``sBIT``) sets the full scale under
    ``"auto"``.
    """
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        # Floats carry no bit depth: [0, 1] images are scaled, others kept.
        full_scale = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif not _is_high_bit_depth(img, values):
        full_scale = 255.0
    elif intensity == "bit_depth":
        full_scale = 65535.0  # /257, clipping 32-bit values above 16 bits
    else:
        bits = significant_bits or covering_bits(values.max(initial=0.0))
        full_scale = float(2**bits - 1)
    return Image.fromarray(
        to_uint8(values, intensity, full_scale=full_scale), mode="L"
    )


def _has_alpha(img):
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        "transparency" in img.info
    )


def to_rgb(img, intensity="auto", significant_bits=None):
    """Convert any Pillow image to 8-bit RGB, compositing alpha on white.

    Parameters
    ----------
    img : PIL.Image.Image
        Any mode.
    intensity : str or tuple, default="auto"
        How values become 8 bits (see :mod:`sktransfer._intensity`).
    significant_bits : int or None, default=None
        Bits that carry data in a high-bit-depth image (a PNG's ``sBIT``).
    """
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        # The policy is applied here, on the values as stored.
        return _high_bit_depth_to_l(img, intensity, significant_bits).convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND)
        rgb = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        rgb = img.convert("RGB")
    if intensity in ("auto", "bit_depth"):
        return rgb  # 8-bit images unchanged, without a copy
    return Image.fromarray(rescale_8bit(np.asarray(rgb), intensity), mode="RGB")


def _identify_within_limit(fp, path, max_image_pixels):
    """The opened (not yet decoded) image, refused if it has too many pixels."""
    img = _identify(fp, path)
    check_pixel_limit(img.size[0] * img.size[1], path, max_image_pixels)
    return img


@contextlib.contextmanager
def _decode_errors(path):
    """Map every way Pillow fails on a file to an ImageLoadError."""
    try:
        yield
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:  # not an OSError
        raise ImageLoadError(path, str(exc)) from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ImageLoadError(path, f"cannot decode image ({reason})") from None


def check_image_header(path, *, max_image_pixels=None):
    """Check ``path`` as :func:`load_rgb_image` does, up to decoding pixels.

    The file must be a non-empty regular file in an allowed format whose
    header gives no more pixels than ``max_image_pixels``. Used for cached
    images, so that the pixel limit holds for them as for any other: it
    reads only the header (a few hundred bytes, microseconds per file).

    Raises
    ------
    ImageLoadError
        With the path and the reason.
    """
    _check_regular_file(path)
    with _decode_errors(path), open(path, "rb") as fp:
        read_image_header(fp, path, max_image_pixels=max_image_pixels)


def read_image_header(fp, name, *, max_image_pixels=None):
    """:func:`check_image_header` for an open binary file ``fp`` named ``name``."""
    with _decode_errors(name):
        if is_dicom(fp):
            check_dicom(fp, name, max_image_pixels=max_image_pixels)
            return
        _identify_within_limit(fp, name, max_image_pixels)


def load_rgb_image(path, *, max_image_pixels=None, min_side=None,
                   intensity="auto"):
    """Load an image file as an upright 8-bit RGB Pillow image.

    Parameters
    ----------
    path : str or os.PathLike
        Image file.
    max_image_pixels : int or None, default=None
        Refuse images with more pixels than this. ``None`` uses Pillow's
        ``Image.MAX_IMAGE_PIXELS``.
    min_side : int or None, default=None
        If given, JPEGs are decoded at the smallest reduced scale whose
        shorter side is still at least ``min_side`` (much faster for large
        photos that are resized anyway).
    intensity : str or tuple, default="auto"
        How pixel values become 8 bits; see :mod:`sktransfer._intensity`.

    Returns
    -------
    image : PIL.Image.Image
        RGB image with EXIF orientation applied; for animated images, the
        first frame.

    Raises
    ------
    ImageLoadError
        With the path and the reason, for every kind of unusable file.
    """
    _check_regular_file(path)
    with _decode_errors(path), open(path, "rb") as fp:
        return read_rgb_image(
            fp, path, max_image_pixels=max_image_pixels, min_side=min_side,
            intensity=intensity,
        )


def read_rgb_image(fp, name, *, max_image_pixels=None, min_side=None,
                   intensity="auto"):
    """:func:`load_rgb_image` for an open binary file ``fp`` named ``name``.

    ``fp`` must be seekable; ``name`` is what errors report (a path or URL).
    """
    with _decode_errors(name):
        if is_dicom(fp):
            return read_dicom(
                fp, name, max_image_pixels=max_image_pixels, intensity=intensity
            )
        img = _identify_within_limit(fp, name, max_image_pixels)
        if min_side is not None and img.format == "JPEG":
            img.draft(None, _draft_size(img.size, min_side))
        img.load()
        bits = None
        if img.format == "PNG" and img.mode.startswith("I"):
            bits = png_significant_bits(fp)
        return upright_rgb(img, intensity, significant_bits=bits)


def upright_rgb(img, intensity="auto", *, significant_bits=None):
    """``img`` turned upright by its EXIF orientation, as 8-bit RGB."""
    return to_rgb(ImageOps.exif_transpose(img), intensity, significant_bits)


def check_pixel_limit(n_pixels, name, max_image_pixels):
    """Refuse an image of ``n_pixels`` beyond the limit, as files are refused."""
    limit = default_max_image_pixels() if max_image_pixels is None else max_image_pixels
    if limit is not None and n_pixels > limit:
        raise ImageLoadError(
            name,
            f"image has {n_pixels:,} pixels, more than the limit of "
            f"{limit:,} (a possible decompression bomb). If the image is "
            "trusted, raise the limit with the max_image_pixels parameter.",
        )


def rgb_from_pil(img, name, *, max_image_pixels=None, intensity="auto"):
    """An in-memory Pillow image as :func:`load_rgb_image` returns a file's.

    The same pixel limit, EXIF orientation and conversion apply, so an image
    opened with ``Image.open(path)`` gives what ``path`` gives. A lazily
    opened image is loaded here; ``img`` itself is not changed otherwise.
    """
    width, height = img.size
    if width == 0 or height == 0:
        raise ImageLoadError(name, f"image has no pixels (size {width}x{height})")
    check_pixel_limit(width * height, name, max_image_pixels)
    with _decode_errors(name):
        img.load()
        return upright_rgb(img, intensity)
