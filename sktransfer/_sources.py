"""What ``X`` may be, checked once and seen by the pipeline as one sequence.

:func:`check_images` accepts

* a 1-D list, tuple, numpy array or pandas Series/Index whose elements are
  image file paths (``str`` or ``os.PathLike``), URLs (``https://``,
  ``s3://``, ``gs://``, ``file://``, ... see :mod:`sktransfer._remote`), Pillow
  images, or numpy arrays each holding one image; kinds may be mixed;
* a DataFrame with exactly one column of such elements (so that
  ``ColumnTransformer`` and table workflows can hand over their image
  column);
* a numpy array of images stacked on the first axis, ``(n, h, w)`` or
  ``(n, h, w, c)`` with ``c`` in {1, 3, 4}, ``uint8`` or floats in [0, 1]
  (see :mod:`sktransfer._in_memory`),

and returns an :class:`ImageSources`. The rest of the pipeline (datasets,
the feature cache, bad-image reports) asks it, never the raw elements, how
to open image ``i``, what its cache key is and how to name it in a message.
"""

import numbers
import os

import numpy as np
from PIL import Image
from scipy.sparse import issparse

from ._cache import image_fingerprint
from ._images import ImageLoadError, check_image_header, load_rgb_image
from ._in_memory import (
    check_dtype,
    check_image_array,
    check_image_shape,
    in_memory_fingerprint,
    open_in_memory,
)
from ._remote import (
    check_file_url,
    check_protocol,
    check_remote_header,
    file_url_path,
    open_remote,
    remote_fingerprint,
    remote_fingerprints,
    url_scheme,
)

__all__ = [
    "MEMORY",
    "ImageSources",
    "as_image_sources",
    "check_images",
    "describe_value",
]

ACCEPTED = (
    "a 1-D list, tuple, numpy array or pandas Series of image file paths, "
    "URLs, PIL images or numpy arrays of one image each; a DataFrame with one "
    "such column; or a numpy array of images stacked as (n, h, w) or "
    "(n, h, w, c)"
)


# -- one implementation per kind of element --------------------------------


class _LocalFiles:
    """Paths of local image files: today's loader and stat-based keys."""

    def path(self, item):
        return item

    def open(self, item, name, max_image_pixels, min_side, intensity):
        try:
            return load_rgb_image(
                self.path(item), max_image_pixels=max_image_pixels,
                min_side=min_side, intensity=intensity,
            )
        except ImageLoadError as exc:
            raise ImageLoadError(name, exc.reason) from None

    def check(self, item, name, max_image_pixels):
        try:
            check_image_header(self.path(item), max_image_pixels=max_image_pixels)
        except ImageLoadError as exc:
            raise ImageLoadError(name, exc.reason) from None

    def fingerprints(self, items):
        return [image_fingerprint(self.path(item)) for item in items]


class _FileURLs(_LocalFiles):
    """``file://`` URLs: local files, reported by the URL the user gave."""

    def path(self, item):
        return file_url_path(item)


class _RemoteFiles:
    """URLs read through fsspec, cached by content."""

    def open(self, item, name, max_image_pixels, min_side, intensity):
        return open_remote(item, max_image_pixels=max_image_pixels,
                           min_side=min_side, intensity=intensity)

    def check(self, item, name, max_image_pixels):
        check_remote_header(item, max_image_pixels=max_image_pixels)

    def fingerprints(self, items):
        return remote_fingerprints(items)


class _InMemory:
    """Pillow images and image arrays, cached by a hash of their pixels."""

    def open(self, item, name, max_image_pixels, min_side, intensity):
        return open_in_memory(item, name, max_image_pixels=max_image_pixels,
                              intensity=intensity)

    def check(self, item, name, max_image_pixels):
        # Pixels are at hand: checking them is converting them.
        open_in_memory(item, name, max_image_pixels=max_image_pixels)

    def fingerprints(self, items):
        return [in_memory_fingerprint(item) for item in items]


PATH, FILE_URL, REMOTE, MEMORY = range(4)
_KINDS = (_LocalFiles(), _FileURLs(), _RemoteFiles(), _InMemory())
_KIND_NAMES = ("path", "file URL", "remote URL", "in-memory image")


class ImageSources:
    """The images of one ``X``, whatever form each came in.

    Built by :func:`check_images`. Indexing with an int gives the element as
    given (path, URL, image); with a slice, an index array or a boolean mask,
    the :class:`ImageSources` of those images, which keep their labels.

    Parameters
    ----------
    items : ndarray of object
        Paths and URLs as ``str``; Pillow images and image arrays as given.
    kinds : ndarray of int8
        ``PATH``, ``FILE_URL``, ``REMOTE`` or ``MEMORY`` per item.
    positions : ndarray of int
        Position of each item in the validated ``X``, for labels.
    name : str, default="X"
        What ``X`` is called in messages.

    Examples
    --------
    >>> import numpy as np
    >>> from sktransfer._sources import check_images
    >>> images = check_images(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    >>> len(images), images.label(1), images.open(1).size
    (2, 'X[1]', (8, 8))
    >>> check_images(["a.png", "https://example.com/b.png"]).label(0)
    'a.png'
    """

    def __init__(self, items, kinds, positions, name="X"):
        self.items = items
        self.kinds = kinds
        self.positions = positions
        self.name = name

    def __len__(self):
        return len(self.items)

    @property
    def shape(self):
        # Read by scikit-learn's _num_samples (check_sample_weight).
        return (len(self.items),)

    def __getitem__(self, key):
        if isinstance(key, numbers.Integral):
            return self.items[key]
        return type(self)(
            self.items[key], self.kinds[key], self.positions[key], self.name
        )

    def __repr__(self):
        counts = np.bincount(self.kinds, minlength=len(_KINDS))
        parts = [f"{c} {_KIND_NAMES[k]}(s)" for k, c in enumerate(counts) if c]
        return f"ImageSources({', '.join(parts) or 'empty'})"

    def label(self, i):
        """How messages name image ``i``: its path or URL, else ``X[j]``."""
        if self.kinds[i] == MEMORY:
            return f"{self.name}[{self.positions[i]}]"
        return self.items[i]

    def open(self, i, *, max_image_pixels=None, min_side=None, intensity="auto"):
        """Image ``i`` as an upright RGB Pillow image.

        ``intensity`` says how pixel values become 8 bits (see
        :mod:`sktransfer._intensity`).

        Raises
        ------
        ImageLoadError
            Naming :meth:`label` and the reason.
        """
        return _KINDS[self.kinds[i]].open(
            self.items[i], self.label(i), max_image_pixels, min_side, intensity
        )

    def check(self, i, *, max_image_pixels=None):
        """Raise what :meth:`open` would, without decoding a file's pixels."""
        _KINDS[self.kinds[i]].check(self.items[i], self.label(i), max_image_pixels)

    def fingerprint(self, i):
        """Image ``i``'s part of a feature-cache key, or None if unreadable."""
        if self.kinds[i] == REMOTE:
            return remote_fingerprint(self.items[i])
        return _KINDS[self.kinds[i]].fingerprints([self.items[i]])[0]

    def fingerprints(self):
        """:meth:`fingerprint` of every image (URLs several at a time)."""
        keys = [None] * len(self)
        for kind, handler in enumerate(_KINDS):
            where = np.flatnonzero(self.kinds == kind)
            if where.size:
                found = handler.fingerprints(list(self.items[where]))
                for i, key in zip(where.tolist(), found):
                    keys[i] = key
        return keys


# -- validation --------------------------------------------------------------


def describe_value(value):
    """How a message names an element that is not an image."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "a missing value (None or NaN)"
    if isinstance(value, (numbers.Number, np.generic)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "an empty string"
    return f"a {type(value).__name__}"


def _is_dataframe(X):
    return hasattr(X, "columns") and len(getattr(X, "shape", ())) == 2


def _only_column(X, name):
    columns = list(X.columns)
    if len(columns) == 1:
        return X[columns[0]]
    shown = ", ".join(repr(c) for c in columns[:10])
    if len(columns) > 10:
        shown += f", ... ({len(columns)} in all)"
    example = repr(columns[0]) if columns else "'image'"
    raise ValueError(
        f"{name} is a DataFrame with {len(columns)} columns ({shown}); it must "
        "have exactly one, holding the images (paths, URLs or in-memory "
        f"images). Select it, e.g. {name}[[{example}]], or in a "
        f"ColumnTransformer give this estimator that column alone: "
        f"(\"images\", estimator, [{example}])."
    )


def _is_torch_tensor(X):
    return type(X).__module__.split(".")[0] == "torch"


def _refuse_top_level(X, name):
    """Errors for an ``X`` that is one image or not a collection at all."""
    if issparse(X):
        raise TypeError(
            f"{name} is a sparse matrix; sparse input is not supported. Pass "
            "a 1-D array-like of image file paths."
        )
    if isinstance(X, (str, os.PathLike)):
        raise ValueError(
            f"{name} must be a 1-D array-like of image file paths, got a single "
            f"path {os.fspath(X)!r}. Wrap it in a list: [{os.fspath(X)!r}]."
        )
    if isinstance(X, Image.Image):
        raise ValueError(
            f"{name} is a single PIL image; {name} holds one image per sample. "
            f"Wrap it in a list: [{name}]."
        )
    if _is_torch_tensor(X):
        raise TypeError(
            f"{name} is a {type(X).__module__}.{type(X).__name__}; pass images "
            "as a numpy array stacked as (n, h, w, c), uint8 or floats in [0, 1] "
            "(for a (n, c, h, w) tensor: X.permute(0, 2, 3, 1).cpu().numpy()), "
            "or as a list of PIL images."
        )


def _stacked(X, name):
    """Images stacked on the first axis of a numeric array."""
    if X.ndim == 2:
        raise ValueError(
            f"{name} is a 2-D numeric array of shape {X.shape}; {name} must "
            "hold one image per sample: a 1-D array-like of image paths, URLs "
            "or images, or images stacked as (n, h, w) or (n, h, w, c). For a "
            f"single grey image, add a leading axis: {name}[np.newaxis]."
        )
    if X.ndim > 4:
        raise ValueError(
            f"{name} is a numeric array of shape {X.shape}; stacked images "
            "are (n, h, w) or (n, h, w, c) with c in {1, 3, 4}."
        )
    check_dtype(X.dtype, name)
    check_image_shape(
        X.shape, name, "(n, h, w)" if X.ndim == 3 else "(n, h, w, c)"
    )
    items = np.empty(X.shape[0], dtype=object)
    for i in range(X.shape[0]):
        items[i] = X[i]  # a view: nothing is copied
    return items


def _object_array(X, name):
    """``X`` as a numpy array of its elements, left as they are."""
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):  # a Series
        try:
            X = X.to_numpy(dtype=object)
        except TypeError:
            X = X.to_numpy()
    if isinstance(X, (list, tuple)) and any(
        isinstance(v, (Image.Image, np.ndarray)) for v in X
    ):
        # np.asarray would unpack images into their pixels.
        items = np.empty(len(X), dtype=object)
        for i, value in enumerate(X):
            items[i] = value
        return items
    if not isinstance(X, (list, tuple, np.ndarray)) and not hasattr(X, "__array__"):
        raise TypeError(f"{name} must be {ACCEPTED}. Got a {type(X).__name__}.")
    try:
        return np.asarray(X, dtype=object)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a 1-D array-like of image file paths: {exc}"
        ) from None


def _classify(items, name):
    kinds = np.empty(len(items), dtype=np.int8)
    out = np.empty(len(items), dtype=object)
    schemes = {}
    for i, value in enumerate(items):
        if isinstance(value, (str, os.PathLike)) and os.fspath(value) != "":
            out[i] = text = os.fspath(value)
            scheme = url_scheme(text) if isinstance(text, str) else None
            if scheme is None:
                kinds[i] = PATH
            elif scheme == "file":
                check_file_url(text, f"{name}[{i}]")
                kinds[i] = FILE_URL
            else:
                schemes.setdefault(scheme, (text, i))
                kinds[i] = REMOTE
            continue
        if isinstance(value, np.ndarray):
            check_image_array(value, f"{name}[{i}]")
        elif not isinstance(value, Image.Image):
            raise ValueError(
                f"{name}[{i}] is {describe_value(value)}, not an image file "
                f"path, URL or image. Every element of {name} must be a str or "
                "pathlib.Path naming an image file or URL, a PIL image, or a "
                "numpy array holding one image."
            )
        out[i] = value
        kinds[i] = MEMORY
    for scheme, (url, i) in schemes.items():
        check_protocol(scheme, url, f"{name}[{i}]")
    return out, kinds


def check_images(X, *, name="X", ensure_non_empty=True):
    """Validate ``X`` as a collection of images; return :class:`ImageSources`.

    Nothing is read: only what can be checked without opening an image
    (types, shapes, dtypes, that URL protocols can be read) raises here.

    Parameters
    ----------
    X : array-like, DataFrame or ndarray
        See the module docstring for the accepted forms. An
        :class:`ImageSources` is returned as it is.
    name : str, default="X"
        What messages call ``X``.
    ensure_non_empty : bool, default=True
        Refuse an ``X`` without images.

    Returns
    -------
    sources : ImageSources

    Raises
    ------
    TypeError
        For a form of ``X`` that is not accepted, or an image array of
        another dtype than uint8 or float.
    ValueError
        For a wrong shape, an element that is not an image, or an empty
        ``X``.
    """
    if isinstance(X, ImageSources):
        return X
    _refuse_top_level(X, name)
    if _is_dataframe(X):
        X = _only_column(X, name)
    if isinstance(X, np.ndarray) and X.dtype.kind in "biufc" and X.ndim >= 2:
        items = _stacked(X, name)
        kinds = np.full(len(items), MEMORY, dtype=np.int8)
    else:
        items = _object_array(X, name)
        if items.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-D array-like of image file paths, got an "
                f"array of shape {items.shape}. Pass one path per sample, e.g. "
                "a list of str or a pandas Series (or stack in-memory images "
                "in a numeric array of shape (n, h, w) or (n, h, w, c))."
            )
        kinds = None
    if ensure_non_empty and len(items) == 0:
        raise ValueError(
            f"{name} is empty: found 0 image paths while a minimum of 1 is "
            "required."
        )
    if kinds is None:
        items, kinds = _classify(items, name)
    return ImageSources(items, kinds, np.arange(len(items)), name)


def as_image_sources(images):
    """``images`` as :class:`ImageSources`, empty allowed (internal callers)."""
    return check_images(images, ensure_non_empty=False)
