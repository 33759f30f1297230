"""The intensity policy: high-bit-depth files, per-image and window policies,
and that the policy travels with the fitted preprocessing, cache key and
saved model."""

import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from sklearn.utils._param_validation import InvalidParameterError

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor
from sktransfer._images import load_rgb_image, to_rgb
from sktransfer._intensity import check_intensity, covering_bits

# A 12-bit ramp stored in 16 bits: every value 0..4095 once, as 64 x 64.
RAMP = np.arange(4096, dtype=np.uint16).reshape(64, 64)


def _with_sbit(png_bytes, bits):
    """``png_bytes`` with an sBIT chunk of ``bits`` inserted after IHDR."""
    data = bytes([bits])
    chunk = struct.pack(">I4s", 1, b"sBIT") + data
    chunk += struct.pack(">I", zlib.crc32(b"sBIT" + data) & 0xFFFFFFFF)
    end_of_ihdr = 8 + 8 + 13 + 4
    return png_bytes[:end_of_ihdr] + chunk + png_bytes[end_of_ihdr:]


def _save16(path, values, sbit=None):
    Image.fromarray(values).save(path)
    if sbit is not None:
        path.write_bytes(_with_sbit(path.read_bytes(), sbit))
    return str(path)


def _grey(path, intensity):
    return np.asarray(load_rgb_image(path, intensity=intensity))[:, :, 0]


@pytest.fixture(params=["png", "tif"])
def ramp_file(request, tmp_path):
    return _save16(tmp_path / f"ramp.{request.param}", RAMP)


def test_auto_scales_a_12_bit_ramp_to_the_full_8_bit_range(ramp_file):
    grey = _grey(ramp_file, "auto")
    assert grey.flat[4095] == 255
    assert grey.flat[0] == 0
    assert grey.flat[2048] == round(2048 * 255 / 4095)


def test_bit_depth_divides_by_257_as_before(ramp_file):
    grey = _grey(ramp_file, "bit_depth")
    assert grey.flat[4095] == 16  # 4095 / 257 = 15.9: nearly black
    np.testing.assert_array_equal(grey, np.rint(RAMP / 257.0).astype(np.uint8))


def test_minmax_stretches_each_image(tmp_path):
    values = (RAMP % 2901 + 100).astype(np.uint16)  # 100..3000
    grey = _grey(_save16(tmp_path / "m.png", values), "minmax")
    assert grey[values == 100].max() == 0
    assert grey[values == 3000].min() == 255


def test_percentile_clips_to_the_1st_and_99th_percentiles(tmp_path):
    grey = _grey(_save16(tmp_path / "p.png", RAMP), "percentile")
    low, high = np.percentile(RAMP.astype(float), [1, 99])
    expected = np.clip(np.rint((RAMP - low) * 255 / (high - low)), 0, 255)
    np.testing.assert_array_equal(grey, expected.astype(np.uint8))


def test_a_window_maps_low_to_0_and_high_to_255(tmp_path):
    grey = _grey(_save16(tmp_path / "w.png", RAMP), (0, 2047))
    assert grey.flat[2047] == 255
    assert grey.flat[4095] == 255  # clipped
    assert grey.flat[1024] == round(1024 * 255 / 2047)


def test_png_sbit_sets_the_significant_bits(tmp_path):
    # Max 1000 alone would read as 10 bits; sBIT says 12.
    values = (RAMP % 1001).astype(np.uint16)
    with_sbit = _grey(_save16(tmp_path / "s.png", values, sbit=12), "auto")
    without = _grey(_save16(tmp_path / "n.png", values), "auto")
    assert with_sbit[values == 1000].min() == round(1000 * 255 / 4095)
    assert without[values == 1000].min() == round(1000 * 255 / 1023)


def test_covering_bits():
    assert [covering_bits(v) for v in (0, 1023, 1024, 4095, 16383, 65535)] == [
        10,
        10,
        12,
        12,
        14,
        16,
    ]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_8_bit_images_are_unchanged_under_auto_and_bit_depth(mode):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    img = img.convert(mode)
    reference = np.asarray(to_rgb(img, "bit_depth"))
    np.testing.assert_array_equal(np.asarray(to_rgb(img, "auto")), reference)
    if mode in ("L", "RGB"):  # nothing to composite: Pillow's own conversion
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), reference)


def test_minmax_applies_to_8_bit_images_over_all_channels():
    pixels = np.full((4, 4, 3), 100, dtype=np.uint8)
    pixels[0, 0] = (50, 90, 150)
    out = np.asarray(to_rgb(Image.fromarray(pixels), "minmax"))
    assert tuple(out[0, 0]) == (0, 102, 255)


@pytest.mark.parametrize("bad", [(1,), (2, 1), (0, float("nan")), ("a", 2), (True, 3)])
def test_a_bad_window_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="'intensity' parameter.*low < high"):
        check_intensity(bad, "PretrainedFeatureExtractor")


def test_an_unknown_policy_is_refused_at_fit(colour_images):
    X, _ = colour_images
    est = PretrainedFeatureExtractor("tiny_cnn", weights=None, intensity="linear")
    with pytest.raises(InvalidParameterError, match="'intensity' parameter"):
        est.fit(X)


def _extractor(intensity):
    return PretrainedFeatureExtractor(
        "tiny_cnn",
        weights=None,
        random_state=0,
        device="cpu",
        num_workers=0,
        intensity=intensity,
    )


def test_the_policy_is_in_the_preprocessing_and_the_cache_key(tmp_path):
    X = [_save16(tmp_path / "ramp.png", RAMP)]
    auto, old = _extractor("auto").fit(X), _extractor("bit_depth").fit(X)
    assert auto.preprocessing_.intensity == "auto"
    assert old.preprocessing_.intensity == "bit_depth"
    assert auto._feature_cache_key() != old._feature_cache_key()
    # Shared in-memory cache: the second policy must not get the first's rows.
    assert not np.allclose(auto.transform(X), old.transform(X))


def test_a_window_is_recorded_as_floats(colour_images):
    X, _ = colour_images
    est = _extractor((0, 4095)).fit(X)
    assert est.preprocessing_.intensity == (0.0, 4095.0)
    assert est.get_params()["intensity"] == (0, 4095)  # fit never rewrites it


def _ramps(tmp_path):
    return [
        _save16(tmp_path / f"{i}.png", (RAMP // (i + 1)).astype(np.uint16))
        for i in range(4)
    ]


def _classifier(intensity):
    return PretrainedCNNClassifier(
        "tiny_cnn",
        weights=None,
        max_epochs=1,
        batch_size=2,
        random_state=0,
        device="cpu",
        num_workers=0,
        intensity=intensity,
    )


@pytest.mark.parametrize("intensity", ["percentile", (0, 2047)])
def test_the_policy_survives_save_and_load(tmp_path, intensity):
    X = _ramps(tmp_path)
    clf = _classifier(intensity).fit(X, ["a", "b", "a", "b"])
    assert clf.preprocessing_.intensity == check_intensity(intensity)
    expected = clf.predict_proba(X)
    loaded = PretrainedCNNClassifier.load(clf.save(tmp_path / "model"))
    assert loaded.preprocessing_ == clf.preprocessing_
    np.testing.assert_allclose(loaded.predict_proba(X), expected, rtol=1e-6)
    assert pickle.loads(pickle.dumps(clf)).preprocessing_ == clf.preprocessing_
