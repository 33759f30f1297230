"""Frozen feature extraction: stores, bounds, precision and JPEG draft decoding."""

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
