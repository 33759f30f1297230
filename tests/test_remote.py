"""Images behind URLs (fsspec): read like files, cached by content."""

import hashlib
import importlib.util
import sys
import threading
import uuid
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402

from sktransfer import (  # noqa: E402
    BadImagesError,
    PretrainedCNNClassifier,
    PretrainedFeatureExtractor,
)
from sktransfer._sources import REMOTE, check_images  # noqa: E402


class ETagMemoryFS(MemoryFileSystem):
    """An in-memory store that reports an ETag and records what is read."""

    protocol = ("etagmem",)
    store = {}
    pseudo_dirs = [""]
    weak = False
    reads = []

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("etagmem://"))

    def info(self, path, **kwargs):
        out = super().info(path, **kwargs)
        if out["type"] == "file":
            data = self.store[self._strip_protocol(path)].getvalue()
            tag = f'"{hashlib.md5(data).hexdigest()}"'
            out["ETag"] = f"W/{tag}" if self.weak else tag
        return out

    def cat_file(self, path, *args, **kwargs):
        self.reads.append(("cat", path))
        return super().cat_file(path, *args, **kwargs)

    def _open(self, path, mode="rb", block_size=None, **kwargs):
        self.reads.append(("open", path, block_size))
        return super()._open(path, mode, block_size=block_size, **kwargs)


fsspec.register_implementation("etagmem", ETagMemoryFS, clobber=True)


def _upload(protocol, paths):
    """Copy ``paths`` into an in-memory store; return their URLs."""
    fs = fsspec.filesystem(protocol)
    prefix = f"{protocol}://{uuid.uuid4().hex}"
    urls = []
    for path in paths:
        url = f"{prefix}/{Path(path).name}"
        fs.pipe(url, Path(path).read_bytes())
        urls.append(url)
    return urls


@pytest.fixture
def memory_urls(colour_images):
    return _upload("memory", colour_images[0])


@pytest.fixture
def extractor_params():
    return dict(backbone="tiny_cnn", weights=None, random_state=0, device="cpu",
                num_workers=0, batch_size=8)


def test_urls_fit_and_predict_as_the_paths_do(colour_images, memory_urls,
                                              tiny_params):
    paths, y = colour_images
    assert set(check_images(memory_urls).kinds) == {REMOTE}
    expected = PretrainedCNNClassifier(**tiny_params).fit(paths, y)
    clf = PretrainedCNNClassifier(**tiny_params).fit(memory_urls, y)
    np.testing.assert_allclose(clf.predict_proba(memory_urls),
                               expected.predict_proba(paths), atol=1e-6)
    mixed = list(paths[:12]) + memory_urls[12:]
    np.testing.assert_allclose(clf.predict_proba(mixed),
                               expected.predict_proba(paths), atol=1e-6)


def test_key_is_the_content_not_the_url(colour_images, memory_urls,
                                        extractor_params):
    paths, _ = colour_images
    fs = fsspec.filesystem("memory")
    copy = memory_urls[0].rsplit("/", 1)[0] + "/copy.png"
    fs.pipe(copy, Path(paths[0]).read_bytes())
    keys = check_images([memory_urls[0], copy]).fingerprints()
    assert keys[0] == keys[1]
    assert keys[0] == f"content:sha256:{hashlib.sha256(fs.cat(copy)).hexdigest()}"

    ext = PretrainedFeatureExtractor(**extractor_params).fit(paths)
    before = ext.transform(memory_urls)
    fs.pipe(memory_urls[0], Path(paths[-1]).read_bytes())  # same URL, new image
    after = ext.transform(memory_urls)
    np.testing.assert_allclose(after[0], before[-1], atol=1e-6)
    np.testing.assert_allclose(after[1:], before[1:], atol=1e-6)


@pytest.mark.parametrize("weak", [False, True], ids=["strong", "weak"])
def test_strong_etag_spares_the_download_of_cached_images(
    weak, colour_images, extractor_params, monkeypatch
):
    paths, _ = colour_images
    monkeypatch.setattr(ETagMemoryFS, "weak", weak)
    urls = _upload("etagmem", paths[:4])
    key = check_images(urls).fingerprint(0)
    assert key.startswith("content:sha256:" if weak else f"url:{urls[0]}|ETag=")
    ext = PretrainedFeatureExtractor(**extractor_params).fit(paths)
    first = ext.transform(urls)
    ETagMemoryFS.reads.clear()
    np.testing.assert_allclose(ext.transform(urls), first)
    if weak:  # hashed: downloaded in full to compute the key
        assert [r[0] for r in ETagMemoryFS.reads] == ["cat"] * 4 + ["open"] * 4
    else:  # a metadata request and the header of each image, nothing more
        assert [r[0] for r in ETagMemoryFS.reads] == ["open"] * 4
    assert all(r[2] == 64 * 1024 for r in ETagMemoryFS.reads if r[0] == "open")


def test_unreadable_urls_are_reported_by_url(colour_images, memory_urls,
                                             tiny_params):
    _, y = colour_images
    fs = fsspec.filesystem("memory")
    broken, missing = memory_urls[3], memory_urls[4] + ".gone"
    fs.pipe(broken, b"not an image")
    X = memory_urls[:4] + [missing] + memory_urls[5:]
    clf = PretrainedCNNClassifier(**tiny_params)
    with pytest.raises(BadImagesError) as info:
        clf.fit(X, y)
    assert dict(info.value.errors) == {
        broken: info.value.errors[0][1], missing: "file does not exist"}
    assert "not a readable image" in info.value.errors[0][1]
    with pytest.warns(UserWarning, match="Skipped 2 of 24"):
        clf.set_params(on_bad_image="skip").fit(X, y)
    assert [url for url, _ in clf.skipped_images_] == [broken, missing]
    with pytest.raises(BadImagesError, match=r"\.gone: file does not exist"):
        clf.predict(X[4:6])
    with pytest.raises(BadImagesError, match="more than the limit of 100"):
        clf.set_params(max_image_pixels=100).predict(memory_urls[:2])


def test_unknown_protocol_fails_before_anything_is_read(memory_urls):
    with pytest.raises(ValueError, match=r"X\[1\] = 'nosuch://a/b.png': fsspec "
                                         "knows no protocol 'nosuch'"):
        check_images([memory_urls[0], "nosuch://a/b.png"])


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None,
                    reason="s3fs is installed")
def test_store_without_its_package_says_so():
    with pytest.raises(ImportError, match=r"X\[0\] = 's3://bucket/a.png': reading "
                                          "s3:// URLs needs a package"):
        check_images(["s3://bucket/a.png"])


def test_without_fsspec_the_error_names_the_extra(monkeypatch, colour_images):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(ImportError, match=r'pip install "sktransfer\[remote\]"'):
        check_images(["https://example.com/a.png"])
    check_images(list(colour_images[0]))  # paths need no fsspec


class _ETagHandler(SimpleHTTPRequestHandler):
    """Serves a folder with a strong ETag, quietly."""

    def end_headers(self):
        path = Path(self.translate_path(self.path))
        if path.is_file():
            st = path.stat()
            self.send_header("ETag", f'"{st.st_ino:x}-{st.st_size:x}"')
        super().end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_folder(colour_images):
    """A local HTTP server on 127.0.0.1 serving the colour images."""
    pytest.importorskip("aiohttp")
    folder = Path(colour_images[0][0]).parent
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_ETagHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_urls(colour_images, http_folder, extractor_params):
    paths, _ = colour_images
    urls = [f"{http_folder}/{Path(p).name}" for p in paths]
    assert check_images(urls).fingerprint(0).startswith(f"url:{urls[0]}|ETag=")
    ext = PretrainedFeatureExtractor(**extractor_params).fit(paths)
    np.testing.assert_allclose(ext.transform(urls), ext.transform(paths),
                               atol=1e-6)
    with pytest.raises(BadImagesError, match=r"missing\.png: file does not exist"):
        ext.transform([urls[0], f"{http_folder}/missing.png"])
