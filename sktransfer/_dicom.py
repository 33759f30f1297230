"""DICOM files (``.dcm``) through the optional pydicom, as 8-bit RGB images.

A DICOM image is a grid of stored integers plus the header that says what
they mean. They become what a radiologist's viewer shows:

1. the stored values are decoded (pydicom's decoders, for compressed
   transfer syntaxes those of the plugins installed);
2. the modality LUT or Rescale Slope/Intercept turns them into the
   modality's units (Hounsfield units for CT);
3. the ``intensity`` policy maps those to 8 bits. Under ``"auto"`` the
   header's first VOI window (Window Center/Width) is used when present,
   else the full range of Bits Stored; ``"bit_depth"`` uses the full range
   of Bits Allocated (the storage depth, as 16-bit PNGs are divided by 257);
   ``"minmax"``, ``"percentile"`` and ``(low, high)`` work on the modality
   values (a window ``(-1000, 400)`` is in Hounsfield units for CT);
4. MONOCHROME1 images (where 0 is white) are inverted, so that bright
   always means dense.

Multi-frame files (cine, volumes) give their **first frame**, as animated
GIFs do: the estimators take one 2-D image per sample. Split volumes into
one file per slice to use every frame.

Only Part 10 files (a 128-byte preamble, then ``DICM``) are recognised.
"""

import numpy as np
from PIL import Image

from ._intensity import rescale_8bit, to_uint8

__all__ = ["check_dicom", "is_dicom", "read_dicom"]

_MAGIC_OFFSET = 128
_MAGIC = b"DICM"

# Elements larger than this are skipped, not read, by the header check.
_DEFER_BYTES = 1024


def is_dicom(fp):
    """Whether the open binary file ``fp`` is a DICOM Part 10 file.

    Reads 132 bytes and seeks back to the start; pydicom is not needed.
    """
    fp.seek(_MAGIC_OFFSET)
    magic = fp.read(len(_MAGIC))
    fp.seek(0)
    return magic == _MAGIC


def import_pydicom():
    """pydicom, or an ImportError naming the extra that installs it."""
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401  (pydicom >= 3)
    except ImportError as exc:
        raise ImportError(
            "Reading DICOM (.dcm) files needs pydicom 3 or later: "
            "pip install 'sktransfer[medical]'"
        ) from exc
    return pydicom


def _bad(name, reason):
    # Imported here: _images imports this module.
    from ._images import ImageLoadError

    return ImageLoadError(name, reason)


def _read(pydicom, fp, name, **kwargs):
    fp.seek(0)
    try:
        return pydicom.dcmread(fp, **kwargs)
    except Exception as exc:  # noqa: BLE001  (pydicom raises many types)
        raise _bad(
            name, f"not a readable DICOM file ({type(exc).__name__}: {exc})"
        ) from None


def _check_dataset(pydicom, ds, name, max_image_pixels):
    """Raise the reason a parsed ``ds`` cannot give an image, if any."""
    from ._images import check_pixel_limit

    if "PixelData" not in ds:
        kind = ds.get("Modality") or ds.get("SOPClassUID", "unknown")
        raise _bad(
            name,
            f"DICOM file has no pixel data (a {kind} object, not an image)",
        )
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise _bad(name, "DICOM file has pixel data but no Rows/Columns")
    check_pixel_limit(int(rows) * int(columns), name, max_image_pixels)
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = pydicom.pixels.get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            missing = ""
            if decoder is not None:
                needs = decoder.missing_dependencies
                missing = f"; install a decoder plugin ({'; '.join(needs)})"
            raise _bad(
                name,
                f"DICOM pixel data is compressed as {syntax.name}, which "
                f"cannot be decoded here{missing}",
            )


def check_dicom(fp, name, *, max_image_pixels=None):
    """Check a DICOM file up to decoding its pixels (large values skipped).

    Raises
    ------
    ImageLoadError
        For a file pydicom cannot parse, one without pixel data, with too
        many pixels, or compressed in a syntax no installed plugin decodes.
    """
    pydicom = import_pydicom()
    ds = _read(pydicom, fp, name, defer_size=_DEFER_BYTES)
    _check_dataset(pydicom, ds, name, max_image_pixels)


def _stored_range(ds, bits):
    """The modality values of the lowest and highest storable integers."""
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (
        (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    )
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return tuple(ends)


def _header_window(ds):
    """``(low, high)`` of the first Window Center/Width, or None."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    # Multi-valued when the header offers several windows; take the first.
    center = float(center[0] if hasattr(center, "__len__") else center)
    width = float(width[0] if hasattr(width, "__len__") else width)
    if not width > 0:
        return None
    return center - width / 2.0, center + width / 2.0


def _window_for(ds, intensity):
    """The window that ``intensity`` means for this file's modality values."""
    if intensity == "auto":
        window = _header_window(ds)
        if window is not None:
            return window
        return _stored_range(ds, int(ds.get("BitsStored", 16)))
    if intensity == "bit_depth":
        return _stored_range(ds, int(ds.get("BitsAllocated", 16)))
    return intensity  # minmax, percentile, or a (low, high) tuple


def _grey_to_uint8(values, ds, intensity):
    # A (low, high) window, or a per-image policy of to_uint8's.
    out = to_uint8(values, _window_for(ds, intensity), full_scale=0.0)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = 255 - out  # stored with 0 as white
    return out


def _colour_to_uint8(pixels, intensity):
    if pixels.dtype == np.uint8:
        return rescale_8bit(pixels, intensity)
    full_scale = 255.0 if pixels.max(initial=0) <= 255 else 65535.0
    policy = "bit_depth" if intensity == "auto" else intensity
    return to_uint8(pixels, policy, full_scale=full_scale)


def _first_frame(pydicom, ds, name):
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        # index=0 decodes one frame only, not the whole volume.
        return pydicom.pixels.pixel_array(ds, index=0 if n_frames > 1 else None)
    except Exception as exc:  # noqa: BLE001  (decoders raise many types)
        raise _bad(
            name, f"cannot decode DICOM pixel data ({type(exc).__name__}: {exc})"
        ) from None


def read_dicom(fp, name, *, max_image_pixels=None, intensity="auto"):
    """The DICOM file ``fp`` as an 8-bit RGB Pillow image (see module doc).

    Raises
    ------
    ImageLoadError
        With ``name`` and the reason, for every kind of unusable file.
    ImportError
        When pydicom is not installed.
    """
    pydicom = import_pydicom()
    ds = _read(pydicom, fp, name)
    _check_dataset(pydicom, ds, name, max_image_pixels)
    pixels = _first_frame(pydicom, ds, name)
    photometric = ds.get("PhotometricInterpretation", "MONOCHROME2")
    if photometric == "PALETTE COLOR":
        pixels = pydicom.pixels.apply_color_lut(pixels, ds)
    if pixels.ndim == 3:  # colour: pydicom already gives RGB
        return Image.fromarray(_colour_to_uint8(pixels, intensity), mode="RGB")
    values = pydicom.pixels.apply_modality_lut(pixels, ds).astype(np.float64)
    return Image.fromarray(_grey_to_uint8(values, ds, intensity), mode="L").convert(
        "RGB"
    )
