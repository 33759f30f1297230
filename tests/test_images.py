"""Every kind of image file a user may hand over, good and bad."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_colour_images
from PIL import Image, ImageFile
from skorch.callbacks import Callback

import sktransfer._frozen as frozen_module
from sktransfer import BadImagesError, ImageLoadError, PretrainedCNNClassifier
from sktransfer._images import load_rgb_image
from sktransfer._transforms import Preprocessing, eval_transform

PREP = Preprocessing(resize_size=36, crop_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.fixture(autouse=True)
def _pillow_globals_untouched():
    """Loading never changes Pillow's process-wide safety settings."""
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    yield
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


def _save(tmp_path, name, img, **kwargs):
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


def _rgb(size=(20, 16), colour=(200, 30, 30)):
    return Image.new("RGB", size, colour)


def _png_header_only(path, width, height):
    """A PNG whose header claims ``width x height`` pixels: a cheap bomb."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    return path


def _reason(path, **kwargs):
    with pytest.raises(ImageLoadError) as info:
        load_rgb_image(path, **kwargs)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    return info.value.reason


# -- unusable files ---------------------------------------------------------


def test_missing_file(tmp_path):
    assert "does not exist" in _reason(tmp_path / "nope.png")


def test_directory(tmp_path):
    assert "directory" in _reason(tmp_path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    assert "empty" in _reason(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not pixels\n" * 10)
    assert "not a readable image" in _reason(path)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated_file(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = _save(tmp_path, f"full.{fmt}", Image.fromarray(noise))
    data = path.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) // 2])
    assert "cannot decode" in _reason(cut)


def test_decompression_bomb_refused_by_default(tmp_path):
    path = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    reason = _reason(path)
    assert "10,000,000,000 pixels" in reason
    assert "max_image_pixels" in reason


def test_warning_sized_bomb_is_an_error_and_the_limit_can_be_raised(tmp_path):
    # 1.5x the limit: Pillow alone would only warn.
    path = _save(tmp_path, "big.png", _rgb((30, 20)))
    reason = _reason(path, max_image_pixels=400)
    assert "600 pixels" in reason and "max_image_pixels" in reason
    assert load_rgb_image(path, max_image_pixels=600).size == (30, 20)


def test_bomb_limit_reaches_fit(tmp_path, tiny_params):
    X, y = make_colour_images(tmp_path, 3, size=(30, 20))
    clf = PretrainedCNNClassifier(**tiny_params, max_image_pixels=400)
    with pytest.raises(BadImagesError, match="max_image_pixels"):
        clf.fit(X, y)
    clf.set_params(max_image_pixels=600).fit(X, y)
    assert clf.n_train_images_ == 6


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_does_not_hang(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    assert "not a regular file" in _reason(path)


def test_symlinks(tmp_path):
    target = _save(tmp_path, "real.png", _rgb())
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert load_rgb_image(link).getpixel((0, 0)) == (200, 30, 30)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "gone.png")
    assert "does not exist" in _reason(dangling)


# -- modes ------------------------------------------------------------------


def _pixel(path):
    img = load_rgb_image(path)
    assert img.mode == "RGB"
    return img.getpixel((0, 0))


def test_mode_1_and_l(tmp_path):
    assert _pixel(_save(tmp_path, "one.png", Image.new("1", (8, 8), 1))) == (255,) * 3
    assert _pixel(_save(tmp_path, "grey.png", Image.new("L", (8, 8), 90))) == (90,) * 3


def test_la_transparent_is_white(tmp_path):
    path = _save(tmp_path, "la.png", Image.new("LA", (8, 8), (0, 0)))
    assert _pixel(path) == (255, 255, 255)


def test_rgba_transparent_is_white_not_black(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.putpixel((1, 1), (10, 20, 30, 255))
    path = _save(tmp_path, "rgba.png", img)
    loaded = load_rgb_image(path)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 1)) == (10, 20, 30)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    img.putpixel((1, 1), 1)
    path = _save(tmp_path, "pal.png", img, transparency=0)
    loaded = load_rgb_image(path)
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 1)) == (200, 30, 30)


def test_cmyk(tmp_path):
    path = _save(tmp_path, "cmyk.tiff", Image.new("CMYK", (8, 8), (0, 255, 255, 0)))
    assert _pixel(path) == (255, 0, 0)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 32768, dtype=np.uint16)
    path = _save(tmp_path, "deep.png", Image.fromarray(arr))
    assert Image.open(path).mode.startswith("I")
    r, g, b = _pixel(path)
    assert r == g == b and abs(r - 128) <= 1


def test_float_image(tmp_path):
    arr = np.full((8, 8), 0.5, dtype=np.float32)
    path = _save(tmp_path, "float.tiff", Image.fromarray(arr, mode="F"))
    r, g, b = _pixel(path)
    assert r == g == b and abs(r - 128) <= 1


def test_exif_rotation_matches_physically_rotated_copy(tmp_path):
    arr = np.zeros((32, 48, 3), dtype=np.uint8)
    arr[:16, :24] = (255, 0, 0)  # a red top-left corner shows any turn or flip
    arr[16:, 24:] = (0, 0, 255)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    tagged = _save(tmp_path, "tagged.jpg", img, exif=exif, quality=100)
    upright = _save(tmp_path, "upright.jpg", img.transpose(Image.Transpose.ROTATE_270),
                    quality=100)
    plain = _save(tmp_path, "plain.jpg", img, quality=100)
    transform = eval_transform(PREP)
    t_tagged, t_upright, t_plain = (
        transform(load_rgb_image(p)) for p in (tagged, upright, plain)
    )
    assert load_rgb_image(tagged).size == (32, 48)
    assert (t_tagged - t_upright).abs().mean() < 0.05
    assert (t_plain - t_upright).abs().mean() > 0.5


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    r, g, b = _pixel(path)
    assert r > 200 and b < 50


@pytest.mark.parametrize("size", [(1, 1), (4000, 10)])
def test_extreme_shapes(tmp_path, size, tiny_params):
    path = _save(tmp_path, "odd.png", _rgb(size))
    assert eval_transform(PREP)(load_rgb_image(path)).shape == (3, 32, 32)
    X, y = make_colour_images(tmp_path / "rest", 3)
    X = np.append(X, str(path))
    y = np.append(y, "red")
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    assert clf.predict([str(path)])[0] in clf.classes_


# -- names and containers -----------------------------------------------------


def test_unicode_and_spaces_paths_series(tmp_path, tiny_params):
    folder = tmp_path / "dossier été"
    folder.mkdir()
    names = ["图像 1.png", "ñandú 2.png", "plain name.png", "x y z.png"]
    colours = [(200, 30, 30), (200, 30, 30), (30, 200, 30), (30, 200, 30)]
    paths = [_save(folder, n, _rgb(colour=c)) for n, c in zip(names, colours)]
    y = ["red", "red", "green", "green"]
    clf = PretrainedCNNClassifier(**tiny_params)
    as_path = clf.fit(paths, y).predict_proba(paths)  # pathlib.Path objects
    as_series = clf.fit(pd.Series([str(p) for p in paths]), pd.Series(y))
    np.testing.assert_allclose(as_series.predict_proba(pd.Series(paths)), as_path)
    assert isinstance(paths[0], Path)


# -- the on_bad_image policy ------------------------------------------------------


class _CountEpochs(Callback):
    def initialize(self):
        self.epochs_ = 0
        return self

    def on_epoch_begin(self, net, **kwargs):
        self.epochs_ += 1


@pytest.fixture
def with_bad_files(tmp_path):
    X, y = make_colour_images(tmp_path, 6)
    (tmp_path / "empty.png").touch()
    (tmp_path / "text.png").write_text("hello")
    X = np.concatenate([X, [str(tmp_path / "empty.png"), str(tmp_path / "text.png"),
                            str(tmp_path / "missing.png")]])
    y = np.concatenate([y, ["red", "green", "green"]])
    return X, y


@pytest.mark.parametrize("cache", ["auto", False])
def test_raise_lists_every_bad_file_before_training(with_bad_files, tiny_params, cache):
    X, y = with_bad_files
    counter = _CountEpochs()
    clf = PretrainedCNNClassifier(**tiny_params, cache=cache,
                                  net_params={"callbacks": [counter]})
    with pytest.raises(BadImagesError) as info:
        clf.fit(X, y)
    message = str(info.value)
    assert "3 image file(s)" in message and "on_bad_image='skip'" in message
    for path, reason in [(X[-3], "empty"), (X[-2], "not a readable"),
                         (X[-1], "does not exist")]:
        assert f"{path}: " in message and reason in message
    assert [p for p, _ in info.value.errors] == list(X[-3:])
    assert not hasattr(counter, "epochs_") or counter.epochs_ == 0


def test_bad_file_list_is_capped(tmp_path):
    errors = [(str(tmp_path / f"{i}.png"), "file is empty (0 bytes)")
              for i in range(25)]
    message = str(BadImagesError(errors, "fix them"))
    assert "25 image file(s)" in message and "... and 5 more" in message
    assert message.count("file is empty") == 20


@pytest.mark.parametrize("cache", ["auto", False])
def test_skip_drops_files_with_their_labels(with_bad_files, tiny_params, cache):
    X, y = with_bad_files
    clf = PretrainedCNNClassifier(**tiny_params, cache=cache, on_bad_image="skip")
    with pytest.warns(UserWarning, match="Skipped 3 of 15 images") as record:
        clf.fit(X, y)
    assert str(X[-1]) in str(record[0].message)
    assert clf.n_train_images_ == 12
    assert [p for p, _ in clf.skipped_images_] == list(X[-3:])
    # The labels of the skipped files went with them: both classes keep 6.
    assert list(clf.classes_) == ["green", "red"]
    assert clf.score(X[:12], y[:12]) == 1.0


def test_skip_keeps_the_right_labels(tmp_path, tiny_params):
    X, y = make_colour_images(tmp_path, 4, classes=("red", "green", "blue"))
    (tmp_path / "bad.png").touch()
    # The only "blue"-labelled file left after skipping would be wrong if
    # labels were shifted; here every blue image but one is bad.
    X = np.concatenate([X[:8], [str(tmp_path / "bad.png")] * 4])
    y = np.concatenate([y[:8], ["blue"] * 4])
    with pytest.warns(UserWarning, match="Skipped 4"):
        clf = PretrainedCNNClassifier(**tiny_params, on_bad_image="skip").fit(X, y)
    assert list(clf.classes_) == ["green", "red"]  # "blue" left with its files
    assert clf.n_classes_ == 2 and clf.n_train_images_ == 8


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_predict_never_drops(with_bad_files, tiny_params, policy):
    X, y = with_bad_files
    clf = PretrainedCNNClassifier(**tiny_params, on_bad_image="skip")
    with pytest.warns(UserWarning):
        clf.fit(X, y)
    clf.set_params(on_bad_image=policy)
    for method in (clf.predict, clf.predict_proba, clf.transform):
        with pytest.raises(BadImagesError, match="nothing is skipped") as info:
            method(X)
        assert str(X[-1]) in str(info.value)
    assert torch.is_tensor(torch.as_tensor(clf.predict_proba(X[:12])))


def test_predict_in_chunks(with_bad_files, tiny_params, monkeypatch):
    X, y = with_bad_files
    good = X[:12]
    clf = PretrainedCNNClassifier(**tiny_params, unfreeze=1, cache=False)
    clf.fit(good, y[:12])
    whole = clf.predict_proba(good)
    monkeypatch.setattr(frozen_module, "PREDICT_CHUNK", 5)
    np.testing.assert_allclose(clf.predict_proba(good), whole, rtol=1e-6)
    assert clf.transform(good).shape[0] == 12
    # Bad files in two different chunks are all listed, in input order.
    X_mixed = np.concatenate([X[-3:-2], good, X[-2:]])
    with pytest.raises(BadImagesError) as info:
        clf.predict(X_mixed)
    assert [p for p, _ in info.value.errors] == [X[-3], X[-2], X[-1]]


# -- names the OS refuses --------------------------------------------------------


def test_nul_byte_in_path_is_a_bad_image(tmp_path):
    assert "invalid path" in _reason(str(tmp_path / "a\0b.png"))


@pytest.mark.parametrize("cache", ["auto", False])
def test_nul_byte_path_is_reported_with_its_index_and_skipped(
    tmp_path, tiny_params, cache
):
    X, y = make_colour_images(tmp_path, 4)
    bad = str(tmp_path / "red_\0.png")
    X = np.insert(X.astype(object), 2, bad)
    y = np.insert(y, 2, "red")
    params = dict(tiny_params, max_epochs=1, cache=cache)
    with pytest.raises(BadImagesError, match="invalid path") as info:
        PretrainedCNNClassifier(**params).fit(X, y)
    assert [path for path, _ in info.value.errors] == [bad]
    with pytest.warns(UserWarning, match="Skipped 1 of 9"):
        clf = PretrainedCNNClassifier(**params, on_bad_image="skip").fit(X, y)
    assert [path for path, _ in clf.skipped_images_] == [bad]
    assert clf.n_train_images_ == 8
    with pytest.raises(BadImagesError, match="invalid path"):
        clf.predict(X)
