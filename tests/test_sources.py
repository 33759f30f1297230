"""What X may be: each accepted form, each refused one, keys and labels."""

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.utils import _safe_indexing

from sktransfer import ImageLoadError
from sktransfer._data import check_image_paths
from sktransfer._images import load_rgb_image
from sktransfer._sources import FILE_URL, MEMORY, PATH, check_images


@pytest.fixture(scope="module")
def pixels(colour_images):
    """The colour images as one uint8 array (24, 30, 40, 3)."""
    paths, _ = colour_images
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _rgb_array(image):
    return np.asarray(image, dtype=np.uint8)


def test_paths_are_validated_as_before(tmp_path):
    sources = check_images([tmp_path / "a.png", "b.png"])
    assert list(sources.kinds) == [PATH, PATH]
    assert list(sources.items) == [str(tmp_path / "a.png"), "b.png"]
    assert sources.label(1) == "b.png" and sources[1] == "b.png"


@pytest.mark.parametrize("form", [
    "list of PIL", "tuple of PIL", "uint8 (n, h, w, 3)", "uint8 (n, h, w, 4)",
    "uint8 (n, h, w, 1)", "uint8 (n, h, w)", "float (n, h, w, 3)",
    "list of arrays", "Series of PIL", "one-column DataFrame of PIL",
])
def test_in_memory_forms_give_the_pixels_of_the_files(form, colour_images, pixels):
    paths, _ = colour_images
    grey = pixels[..., 0]
    opaque = np.concatenate(
        [pixels, np.full(pixels.shape[:3] + (1,), 255, np.uint8)], axis=3
    )
    pils = [Image.fromarray(a) for a in pixels]
    X = {
        "list of PIL": [Image.open(p) for p in paths],
        "tuple of PIL": tuple(pils),
        "uint8 (n, h, w, 3)": pixels,
        "uint8 (n, h, w, 4)": opaque,
        "uint8 (n, h, w, 1)": grey[..., None],
        "uint8 (n, h, w)": grey,
        "float (n, h, w, 3)": pixels / 255.0,
        "list of arrays": list(pixels),
        "Series of PIL": pd.Series(pils),
        "one-column DataFrame of PIL": pd.DataFrame({"image": pils}),
    }[form]
    expected = np.repeat(grey[..., None], 3, axis=3) if "w, 1)" in form or (
        "w)" in form) else pixels
    sources = check_images(X)
    assert len(sources) == 24 and set(sources.kinds) == {MEMORY}
    assert sources.label(5) == "X[5]"
    for i in (0, 17):
        image = sources.open(i)
        assert image.mode == "RGB" and image.size == (40, 30)
        assert np.array_equal(_rgb_array(image), expected[i])
    if expected is pixels:
        assert np.array_equal(_rgb_array(sources.open(3)),
                              _rgb_array(load_rgb_image(paths[3])))


def test_images_of_different_sizes_and_kinds_mix(colour_images, pixels):
    paths, _ = colour_images
    X = [paths[0], Image.new("L", (7, 5), 128), pixels[1][:10, :20],
         Path(paths[2])]
    sources = check_images(X)
    assert list(sources.kinds) == [PATH, MEMORY, MEMORY, PATH]
    assert [sources.open(i).size for i in range(4)] == [
        (40, 30), (7, 5), (20, 10), (40, 30)]
    assert [sources.label(i) for i in range(4)] == [paths[0], "X[1]", "X[2]",
                                                      paths[2]]


def test_alpha_is_composited_on_white_as_for_files():
    rgba = np.zeros((1, 4, 4, 4), dtype=np.uint8)  # transparent black
    assert (_rgb_array(check_images(rgba).open(0)) == 255).all()


def test_exif_orientation_of_a_pil_image_applies_as_for_its_file(tmp_path):
    image = Image.new("RGB", (30, 10), (200, 30, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    opened = check_images([Image.open(path)]).open(0)
    assert opened.size == (10, 30) == load_rgb_image(path).size


@pytest.mark.parametrize("X, kind", [
    ({"a": "a.png"}, "dict"), ({"a.png"}, "set"), ((p for p in ["a.png"]),
                                                   "generator"),
    (None, "NoneType"), (3, "int"),
])
def test_other_containers_are_a_type_error_listing_what_is_accepted(X, kind):
    with pytest.raises(TypeError, match=rf"X must be a 1-D list, tuple, numpy "
                                        rf"array or pandas Series .* Got a {kind}"):
        check_images(X)


def test_torch_tensor_is_refused_with_the_conversion():
    with pytest.raises(TypeError, match=r"torch.Tensor.*permute\(0, 2, 3, 1\)"):
        check_images(torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize("dtype", [np.int64, np.uint16, bool])
def test_other_dtypes_are_refused_with_the_conversion(dtype):
    with pytest.raises(TypeError, match=r"X has dtype .*uint8 \(values 0-255\) or "
                                        r"floating point.*astype\(np.uint8\)"):
        check_images(np.zeros((2, 8, 8, 3), dtype=dtype))
    with pytest.raises(TypeError, match=r"X\[1\] has dtype"):
        check_images([np.zeros((8, 8), np.uint8), np.zeros((8, 8), dtype)])


@pytest.mark.parametrize("shape, message", [
    ((2, 3, 8, 8), r"got c=8\. It looks channels-first .*np.moveaxis"),
    ((2, 8, 8, 2), r"expected \(n, h, w, c\) with c in \{1, 3, 4\}.*got c=2\.$"),
    ((2, 0, 8, 3), "an image needs at least one pixel"),
    ((4, 8), r"2-D numeric array .* single grey image.*X\[np.newaxis\]"),
    ((1, 2, 8, 8, 3), r"\(n, h, w\) or \(n, h, w, c\)"),
])
def test_wrong_shapes_say_which_shape_is_expected(shape, message):
    with pytest.raises(ValueError, match=message):
        check_images(np.zeros(shape, dtype=np.uint8))


def test_an_array_element_that_is_not_one_image():
    with pytest.raises(ValueError, match=r"X\[1\] is an array of shape \(5,\), not "
                                         "an image"):
        check_images([np.zeros((4, 4), np.uint8), np.zeros(5, np.uint8)])
    with pytest.raises(ValueError, match=r"X\[0\] has shape \(4, 4, 5\)"):
        check_images([np.zeros((4, 4, 5), np.uint8)])


def test_an_element_that_is_no_image_names_every_accepted_kind(pixels):
    with pytest.raises(ValueError, match=r"X\[1\] is a missing value .*not an image "
                                         "file path, URL or image.*PIL image"):
        check_images([Image.fromarray(pixels[0]), None])


def test_dataframe_with_several_columns_names_them_and_the_fix(colour_images):
    paths, labels = colour_images
    table = pd.DataFrame({"path": paths, "label": labels})
    with pytest.raises(ValueError, match=r"X is a DataFrame with 2 columns \('path', "
                                         r"'label'\).*X\[\['path'\]\].*"
                                         r"ColumnTransformer"):
        check_images(table)
    assert list(check_images(table[["path"]]).items) == list(paths)


def test_a_single_image_is_refused_with_the_fix(pixels):
    with pytest.raises(ValueError, match=r"single PIL image.*Wrap it in a list"):
        check_images(Image.fromarray(pixels[0]))


def test_indexing_keeps_the_labels_of_the_original_positions(pixels):
    sources = check_images(pixels)
    picked = sources[np.array([7, 2])]
    assert len(picked) == 2 and picked.label(0) == "X[7]"
    assert picked[1] is sources[2]
    assert sources[sources.positions >= 20].label(0) == "X[20]"
    assert sources[3:5].label(1) == "X[4]"
    assert check_images(picked) is picked


@pytest.mark.parametrize("form", ["list", "array", "DataFrame"])
def test_scikit_learn_indexing_gives_valid_input(form, pixels):
    X = {"list": [Image.fromarray(a) for a in pixels], "array": pixels,
         "DataFrame": pd.DataFrame({"image": list(pixels)})}[form]
    subset = _safe_indexing(X, np.array([3, 9, 1]))
    sources = check_images(subset)
    assert len(sources) == 3
    assert np.array_equal(_rgb_array(sources.open(1)), pixels[9])


def test_in_memory_keys_follow_the_pixels(pixels):
    keys = check_images(pixels).fingerprints()
    assert all(k.startswith("pixels:sha256:") for k in keys)
    assert len(set(keys)) == len(keys)
    again = check_images([a.copy() for a in pixels]).fingerprints()
    assert again == keys  # same pixels, same key, whatever the container
    changed = pixels[:1].copy()
    changed[0, 0, 0, 0] ^= 1
    assert check_images(changed).fingerprint(0) != keys[0]
    as_float = check_images(pixels[:1] / 255.0).fingerprint(0)
    assert as_float != keys[0]  # another dtype, another key
    pil = Image.fromarray(pixels[0])
    pil_keys = {check_images([image]).fingerprint(0)
                for image in (pil, pil.convert("RGBA"), pil.convert("P"))}
    assert len(pil_keys) == 3 and keys[0] not in pil_keys


def test_unreadable_pil_image_is_a_bad_image_named_by_its_index(tmp_path, pixels):
    path = tmp_path / "truncated.png"
    Image.fromarray(pixels[0]).save(path)
    path.write_bytes(path.read_bytes()[:200])
    lazy = Image.open(path)  # the header reads fine; the pixels do not
    sources = check_images([Image.fromarray(pixels[1]), lazy])
    assert sources.fingerprint(1) is None
    with pytest.raises(ImageLoadError) as info:
        sources.open(1)
    assert info.value.path == "X[1]"


@pytest.mark.parametrize("value, reason", [
    (np.nan, "NaN or infinity"), (1.5, r"must lie in \[0, 1\], found 0 to 1.5.*"
                                       r"uint8"),
])
def test_bad_float_pixels_are_a_bad_image(value, reason):
    images = np.zeros((3, 4, 4), dtype=np.float32)
    images[2, 1, 1] = value
    sources = check_images(images)
    sources.open(1)
    with pytest.raises(ImageLoadError, match=reason) as info:
        sources.check(2)
    assert info.value.path == "X[2]"


def test_pixel_limit_holds_for_in_memory_images(pixels):
    with pytest.raises(ImageLoadError, match="more than the limit of 100"):
        check_images(pixels).open(0, max_image_pixels=100)


def test_file_urls_are_local_files_reported_by_url(tmp_path, pixels):
    path = tmp_path / "a b.png"
    Image.fromarray(pixels[0]).save(path)
    url = path.as_uri()  # file:///.../a%20b.png
    sources = check_images([url, "file://localhost" + str(tmp_path / "none.png")])
    assert list(sources.kinds) == [FILE_URL, FILE_URL]
    assert np.array_equal(_rgb_array(sources.open(0)), pixels[0])
    assert sources.fingerprint(0) == check_images([path]).fingerprint(0)
    with pytest.raises(ImageLoadError, match="does not exist") as info:
        sources.open(1)
    assert info.value.path.startswith("file://localhost")
    with pytest.raises(ValueError, match="names a file on host 'server'"):
        check_images(["file://server/share/a.png"])


def test_sources_pickle_for_loader_workers(colour_images, pixels):
    paths, _ = colour_images
    sources = check_images([paths[0], Image.fromarray(pixels[1]), pixels[2]])
    copy = pickle.loads(pickle.dumps(sources))
    assert copy.fingerprints() == sources.fingerprints()
    assert copy.label(2) == "X[2]"


def test_check_image_paths_still_wants_paths(pixels):
    with pytest.raises(ValueError, match=r"X\[0\] is a ndarray, not an image file "
                                         "path"):
        check_image_paths(pixels)
