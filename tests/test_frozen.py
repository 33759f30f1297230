"""Frozen feature extraction: stores, bounds, precision and JPEG draft decoding."""

import os
import shutil

import numpy as np
import pytest
import torch
from conftest import make_colour_images
from PIL import Image

from sktransfer import PretrainedCNNClassifier
from sktransfer._cache import DiskFeatureStore, MemoryFeatureStore, image_fingerprint
from sktransfer._frozen import FeatureCacheTooLarge, FrozenPass, extract_features
from sktransfer._images import load_rgb_image
from sktransfer._transforms import Preprocessing, eval_transform

PREP = Preprocessing(resize_size=36, crop_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)


class CountingConv(torch.nn.Module):
    """A fixed 1x1 convolution that counts the images it sees."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.n_images = 0

    def forward(self, x):
        self.n_images += x.shape[0]
        return self.conv(x)


def _extract(frozen, paths, *, model_key="key", stores=(), device="cpu",
             dtype=None, max_image_pixels=None, **kwargs):
    frozen_pass = FrozenPass(
        module=frozen, preprocessing=PREP, device=device, dtype=dtype,
        batch_size=4, num_workers=0, max_image_pixels=max_image_pixels,
        cache_key=model_key, stores=tuple(stores),
    )
    return extract_features(frozen_pass, paths, **kwargs)


def test_partial_hits_fill_the_right_rows(colour_images, tmp_path):
    X, _ = colour_images
    frozen = CountingConv().eval()
    reference, _ = _extract(frozen, X, stores=[])
    memory, disk = MemoryFeatureStore(2**30), DiskFeatureStore(tmp_path)
    _extract(frozen, X[::3], stores=[memory, disk])
    frozen.n_images = 0
    features, errors = _extract(frozen, X, stores=[memory, disk])
    assert errors == []
    assert frozen.n_images == len(X) - len(X[::3])
    torch.testing.assert_close(features, reference)


def test_disk_hits_are_promoted_to_memory(colour_images, tmp_path):
    X, _ = colour_images
    frozen = CountingConv().eval()
    _extract(frozen, X, stores=[DiskFeatureStore(tmp_path)])
    memory = MemoryFeatureStore(2**30)
    _extract(frozen, X, stores=[memory, DiskFeatureStore(tmp_path)])
    assert len(memory) == len(X)


def test_memory_store_does_not_keep_whole_batches(colour_images):
    X, _ = colour_images
    memory = MemoryFeatureStore(2**30)
    _extract(CountingConv().eval(), X[:4], stores=[memory])
    row = memory.get("key", image_fingerprint(X[0]))
    assert row.untyped_storage().nbytes() == row.nelement() * row.element_size()
    assert memory._n_bytes == 4 * row.nelement() * row.element_size()


def test_bad_images_give_zero_rows_and_sorted_errors(colour_images, tmp_path):
    X, _ = colour_images
    jpeg = tmp_path / "whole.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(jpeg)
    bad = tmp_path / "truncated.jpg"  # opens fine, fails on decode
    bad.write_bytes(jpeg.read_bytes()[:300])
    paths = np.array([X[0], str(bad), X[1], str(tmp_path / "missing.png")], object)
    features, errors = _extract(CountingConv().eval(), paths, stores=[])
    assert [i for i, _ in errors] == [1, 3]
    assert torch.all(features[[1, 3]] == 0)
    assert torch.all(features[[0, 2]].abs().sum(dim=(1, 2, 3)) > 0)


def test_max_bytes_stops_after_the_first_batch(colour_images):
    X, _ = colour_images
    frozen = CountingConv().eval()
    row_bytes = 4 * 4 * 32 * 32  # float32, 4 channels of 32x32
    with pytest.raises(FeatureCacheTooLarge, match="per image") as info:
        _extract(frozen, X, stores=[], max_bytes=row_bytes * len(X) - 1)
    assert info.value.n_bytes == row_bytes * len(X)
    assert frozen.n_images == 4  # one batch, not all 24 images
    features, _ = _extract(frozen, X, stores=[], max_bytes=row_bytes * len(X))
    assert features.shape == (len(X), 4, 32, 32)


def test_max_bytes_is_checked_on_cache_hits(colour_images):
    X, _ = colour_images
    memory = MemoryFeatureStore(2**30)
    frozen = CountingConv().eval()
    _extract(frozen, X, stores=[memory])
    frozen.n_images = 0
    with pytest.raises(FeatureCacheTooLarge):
        _extract(frozen, X, stores=[memory], max_bytes=1000)
    assert frozen.n_images == 0


# -- precision -----------------------------------------------------------------


def test_bf16_frozen_features_keep_fp32_predictions(tmp_path, three_class_images):
    """One fitted head, frozen features in fp32 then bf16: same labels."""
    X, y = three_class_images
    X_test, _ = make_colour_images(
        tmp_path, 40, classes=("red", "green", "blue"), fmt="jpg", seed=1
    )
    clf = PretrainedCNNClassifier(
        "resnet18", weights=None, image_size=64, max_epochs=5, lr=0.01,
        batch_size=8, precision="fp32", device="cpu", num_workers=0,
        random_state=0,
    ).fit(X, y)
    fp32 = clf.predict(X_test)
    fp32_proba = clf.predict_proba(X_test)
    clf.set_params(precision="bf16")
    clf._setup_precision()
    assert clf.frozen_dtype_ is torch.bfloat16
    bf16 = clf.predict(X_test)
    assert np.mean(bf16 == fp32) >= 0.98
    # The features really were recomputed in bf16, not taken from the cache.
    assert not np.array_equal(clf.predict_proba(X_test), fp32_proba)
    clf.set_params(precision="fp32")
    clf._setup_precision()
    np.testing.assert_array_equal(clf.predict(X_test), fp32)


# -- JPEG draft decoding --------------------------------------------------------


def _smooth_jpeg(path, size=(2000, 1500)):
    """Photo-like smooth content: low-frequency waves in each channel."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / 100.0
    arr = np.stack(
        [
            127 + 100 * np.sin(0.7 * xx + 0.3 * yy),
            127 + 100 * np.cos(0.5 * yy),
            127 + 100 * np.sin(0.4 * (xx + yy)),
        ],
        axis=-1,
    ).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def test_jpeg_draft_decoding_is_within_resize_differences(tmp_path):
    """Draft (DCT-scaled) decoding changes the final crop no more than an
    ordinary resize choice does.

    The yardstick is Pillow's ``Image.reduce`` (a box filter) before the same
    bilinear resize, the shortcut Pillow itself takes with ``reducing_gap``.
    Draft decoding is the same idea done in the DCT domain, so it may differ
    by about as much: the bound is twice that yardstick, and under 1/255 of
    the pixel range on average whatever the yardstick is.
    """
    path = tmp_path / "large.jpg"
    _smooth_jpeg(path)
    prep = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    transform = eval_transform(prep)

    full_image = load_rgb_image(path)
    draft_image = load_rgb_image(path, min_side=256)
    assert full_image.size == (2000, 1500)
    assert draft_image.size == (500, 375)  # 1/4 scale, shorter side >= 256

    full = transform(full_image)
    draft = transform(draft_image)
    box = transform(full_image.reduce(4))
    assert draft.shape == full.shape == (3, 224, 224)

    draft_diff = (draft - full).abs().mean().item()
    yardstick = (box - full).abs().mean().item()
    one_grey_level = 1 / 255 / min(prep.std)  # in normalised units
    assert draft_diff <= 2 * yardstick
    assert draft_diff < one_grey_level


# -- disk entries that do not check out are misses, then rewritten --------------


def _damage(path, kind, frozen_path_row):
    from sktransfer import _cache

    blob = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(blob[: len(blob) - 7])
    elif kind == "flipped-byte":
        path.write_bytes(blob[:-3] + bytes([blob[-3] ^ 0xFF]) + blob[-2:])
    elif kind == "foreign-npy":  # a plain .npy written under our name
        with open(path, "wb") as f:
            np.save(f, frozen_path_row.numpy())
    elif kind == "garbage":
        path.write_bytes(b"\0" * 100)
    elif kind == "wrong-dtype":  # a valid-looking entry claiming float64
        assert b'"dtype": "float32"' in blob
        path.write_bytes(blob.replace(b'"dtype": "float32"', b'"dtype": "float64"'))
    else:  # a well-checksummed entry of the right key but the wrong shape
        model_key, fingerprint = frozen_path_row.model_key, frozen_path_row.fp
        path.write_bytes(_cache._encode_entry(model_key, fingerprint, torch.ones(3, 2)))


class _Row:
    def __init__(self, tensor, model_key, fp):
        self.tensor, self.model_key, self.fp = tensor, model_key, fp

    def numpy(self):
        return self.tensor.numpy()


@pytest.mark.parametrize("kind", ["truncated", "flipped-byte", "foreign-npy",
                                  "garbage", "wrong-dtype", "wrong-shape"])
def test_damaged_disk_entry_is_a_miss_and_is_rewritten(colour_images, tmp_path, kind):
    X = colour_images[0][:6]
    disk = DiskFeatureStore(tmp_path)
    frozen = CountingConv()
    first, _ = _extract(frozen, X, stores=[disk])
    fp = image_fingerprint(X[2])
    entry = disk._path("key", fp)
    assert disk.get("key", fp) is not None
    _damage(entry, kind, _Row(first[2], "key", fp))
    frozen.n_images = 0
    again, errors = _extract(frozen, X, stores=[disk])  # no memory store
    assert errors == []
    assert frozen.n_images == 1  # only the damaged entry was recomputed
    torch.testing.assert_close(again, first)
    torch.testing.assert_close(disk.get("key", fp), first[2])  # rewritten


def test_entry_of_another_key_is_refused(colour_images, tmp_path):
    X = colour_images[0][:1]
    disk = DiskFeatureStore(tmp_path)
    _extract(CountingConv(), X, stores=[disk])
    fp = image_fingerprint(X[0])
    # An entry copied under another key's name still names its own key.
    other = disk._path("other", fp)
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(disk._path("key", fp).read_bytes())
    assert disk.get("other", fp) is None


# -- an image whose content changed is never served stale ----------------------


def test_same_size_rewrite_with_restored_mtime_is_a_miss(tmp_path):
    path = tmp_path / "a.bmp"  # uncompressed: a pixel edit keeps the size
    arr = np.full((30, 40, 3), 120, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    memory = MemoryFeatureStore(1 << 20)
    frozen = CountingConv()
    before, _ = _extract(frozen, [str(path)], stores=[memory])
    st = os.stat(path)
    arr[:10] = 250
    Image.fromarray(arr).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    frozen.n_images = 0
    after, _ = _extract(frozen, [str(path)], stores=[memory])
    assert frozen.n_images == 1
    assert not torch.allclose(before, after)


def test_fingerprint_of_a_replaced_file_changes(tmp_path):
    path, new = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (8, 8)).save(path)
    Image.new("RGB", (8, 8)).save(new)
    st = os.stat(path)
    before = image_fingerprint(path)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, path)  # same size, same mtime, another inode
    assert image_fingerprint(path) != before


# -- the pixel limit and bad files hold on cache hits --------------------------


def test_pixel_limit_holds_on_cache_hits(tmp_path):
    small = make_colour_images(tmp_path / "s", 2, size=(40, 30))[0]
    big = make_colour_images(tmp_path / "b", 1, size=(80, 60), classes=("red",))[0]
    paths = np.concatenate([small, big])
    memory = MemoryFeatureStore(1 << 20)
    frozen = CountingConv()
    _extract(frozen, paths, stores=[memory])  # every image cached
    frozen.n_images = 0
    _, errors = _extract(frozen, paths, stores=[memory], max_image_pixels=2000)
    assert frozen.n_images == 0
    assert [i for i, _ in errors] == [len(paths) - 1]
    assert "more than the limit of 2,000" in errors[0][1]


def test_corrupted_cached_image_is_reported(colour_images, tmp_path):
    X = [str(tmp_path / f"{i}.png") for i in range(3)]
    for src, dst in zip(colour_images[0][:3], X):
        shutil.copy(src, dst)
    memory = MemoryFeatureStore(1 << 20)
    _extract(CountingConv(), X, stores=[memory])
    with open(X[1], "r+b") as f:  # same size, header destroyed
        f.write(b"\0" * 16)
    _, errors = _extract(CountingConv(), X, stores=[memory])
    assert [i for i, _ in errors] == [1]
