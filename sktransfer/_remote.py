"""Images behind URLs and object-store paths, read with fsspec.

A string that starts with a scheme of two or more letters and ``://``
(``https://``, ``s3://``, ``gs://``, ``az://``, ``memory://``, ...) is a URL.
``file://`` URLs name local files: they are read as paths, without fsspec,
and cached by the file's stamps like any path. Every other URL is read with
`fsspec <https://filesystem-spec.readthedocs.io>`_, an optional dependency
(``pip install "sktransfer[remote]"``, which brings HTTP support; ``s3fs``,
``gcsfs`` or ``adlfs`` add their stores). Credentials and other storage
options come from fsspec's own configuration (environment variables such as
``FSSPEC_S3_ANON=true``, or files in ``~/.config/fsspec``), as for any fsspec
program.

A remote image is cached by content, never by its URL alone, since the
object behind a URL can change without a trace on this machine:

* when the store reports a strong validator (S3's ``ETag``, GCS's
  ``md5Hash``, an HTTP server's non-weak ``ETag`` or ``Content-MD5``), the
  key is that validator with the URL and the size: one metadata request
  (``HEAD``), no download. Stores compute these from the bytes (S3, GCS) or
  must change them whenever the bytes change (a strong ETag, RFC 9110
  8.8.3). They are only unique per object, hence the URL in the key.
  Weak ETags (``W/"..."``) promise no byte equality and are not used, and
  neither is ``Last-Modified`` (one-second resolution);
* otherwise the key is the SHA-256 of the bytes, which costs a download;
  such an image that is not yet cached is downloaded twice (once to hash,
  once to decode), rather than holding every download in memory.
"""

import hashlib
import re
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ._images import ImageLoadError, read_image_header, read_rgb_image

__all__ = [
    "check_protocol",
    "check_remote_header",
    "file_url_path",
    "open_remote",
    "remote_fingerprints",
    "url_scheme",
]

# Two or more characters, so that a Windows drive ("C://x") is a path.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
# Metadata fields that identify an object's bytes, in order of preference.
_VALIDATORS = ("md5Hash", "ETag", "etag", "Content-MD5", "content_md5")
# Bytes fetched at once when only the header is needed (cache hits).
_HEADER_BLOCK = 64 * 1024
# Metadata requests in flight at once while computing cache keys.
_MAX_THREADS = 16


def url_scheme(value):
    """The lower-case scheme of a URL string, or None for a path."""
    match = _URL.match(value)
    return match.group(1).lower() if match else None


def file_url_path(url):
    """The local path a ``file://`` URL names (percent-escapes decoded)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.request.url2pathname(parts.path)


def check_file_url(url, where):
    """Refuse a ``file://`` URL that names a file on another host."""
    host = urllib.parse.urlsplit(url).netloc
    if host not in ("", "localhost"):
        raise ValueError(
            f"{where} = {url!r} names a file on host {host!r}; a file:// URL "
            "must name a local file (file:///path/to/image.jpg). Mount the "
            "share and pass its local path."
        )


def import_fsspec(url):
    """fsspec, or an ImportError naming the extra that installs it."""
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            f"Reading images from URLs such as {url!r} needs fsspec, an "
            'optional dependency: pip install "sktransfer[remote]" (HTTP '
            "support included; add s3fs, gcsfs or adlfs for their stores)."
        ) from None
    return fsspec


def check_protocol(scheme, url, where):
    """Fail now, not image by image, when fsspec cannot read ``scheme``."""
    fsspec = import_fsspec(url)
    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise ValueError(
            f"{where} = {url!r}: fsspec knows no protocol {scheme!r}. Known "
            f"protocols: {', '.join(sorted(fsspec.available_protocols()))}."
        ) from None
    except ImportError as exc:
        raise ImportError(
            f"{where} = {url!r}: reading {scheme}:// URLs needs a package that "
            f"is not installed. fsspec says: {exc}"
        ) from None


def _filesystem(url):
    # fsspec keeps one instance per protocol and options, in each process.
    return import_fsspec(url).filesystem(url_scheme(url))


def _read(url, read):
    """``read(filesystem)``, with every failure as an ImageLoadError."""
    try:
        return read(_filesystem(url))
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(url, "file does not exist") from None
    except IsADirectoryError:
        raise ImageLoadError(url, "is a directory, not an image file") from None
    except PermissionError as exc:
        raise ImageLoadError(url, f"permission denied ({exc})") from None
    except Exception as exc:
        # Network and store clients raise their own types (aiohttp, botocore):
        # any failure to fetch one image is that image's fault, not the fit's.
        raise ImageLoadError(
            url, f"cannot read ({type(exc).__name__}: {exc})"
        ) from None


def _open_checked(fs, url, **kwargs):
    fp = fs.open(url, "rb", **kwargs)
    if not fp.read(1):
        fp.close()
        raise ImageLoadError(url, "file is empty (0 bytes)")
    fp.seek(0)
    return fp


def open_remote(url, *, max_image_pixels=None, min_side=None, intensity="auto"):
    """The image at ``url`` as :func:`~sktransfer._images.load_rgb_image`
    returns a file's; the pixel limit is checked before the pixels are read.
    """
    def read(fs):
        with _open_checked(fs, url) as fp:
            return read_rgb_image(
                fp, url, max_image_pixels=max_image_pixels, min_side=min_side,
                intensity=intensity,
            )

    return _read(url, read)


def check_remote_header(url, *, max_image_pixels=None):
    """Check the image at ``url`` up to decoding, reading only its start."""
    def read(fs):
        with _open_checked(fs, url, block_size=_HEADER_BLOCK) as fp:
            read_image_header(fp, url, max_image_pixels=max_image_pixels)

    _read(url, read)


def _strong_validator(info):
    for field in _VALIDATORS:
        value = info.get(field)
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).hex()
        if isinstance(value, str) and value and not value.startswith("W/"):
            return f"{field}={value}"
    return None


def remote_fingerprint(url):
    """Cache key part of the image at ``url``, or None if it can't be read."""
    try:
        fs = _filesystem(url)
        info = fs.info(url)
        if info.get("type") == "directory":
            return None
        validator = _strong_validator(info)
        if validator is not None:
            return f"url:{url}|{validator}|size={info.get('size')}"
        data = fs.cat_file(url)
    except Exception:  # unreadable: not cached, and opening it says why
        return None
    return f"content:sha256:{hashlib.sha256(data).hexdigest()}"


def remote_fingerprints(urls):
    """:func:`remote_fingerprint` of each URL, several requests at a time."""
    if len(urls) <= 1:
        return [remote_fingerprint(url) for url in urls]
    with ThreadPoolExecutor(min(_MAX_THREADS, len(urls))) as pool:
        return list(pool.map(remote_fingerprint, urls))
