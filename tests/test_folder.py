"""load_image_folder and the bundled emoji dataset."""

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from sktransfer import load_image_folder
from sktransfer.datasets import emoji_folder, load_emoji


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path, format="PNG")


@pytest.fixture
def folder(tmp_path):
    # Files are listed, never opened: content does not matter here.
    for name in ["dog/b.png", "dog/a.JPG", "dog/sub/c.png", "cat/z.png", "cat/y.webp"]:
        _png(tmp_path / name)
    return tmp_path


def test_paths_and_labels_sorted_by_class_then_path(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean folder warns about nothing
        paths, labels = load_image_folder(folder)
    assert paths.dtype == object and labels.dtype == object
    rel = [os.path.relpath(p, folder) for p in paths]
    assert rel == [
        os.path.join("cat", "y.webp"),
        os.path.join("cat", "z.png"),
        os.path.join("dog", "a.JPG"),
        os.path.join("dog", "b.png"),
        os.path.join("dog", "sub", "c.png"),
    ]
    assert labels.tolist() == ["cat", "cat", "dog", "dog", "dog"]
    assert all(isinstance(p, str) for p in paths)


def test_accepts_pathlib_and_str_alike(folder):
    a, la = load_image_folder(folder)
    b, lb = load_image_folder(str(folder))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)


def test_hidden_and_non_image_entries_are_skipped_and_reported(folder):
    (folder / ".git").mkdir()
    (folder / "README.txt").write_text("about")
    (folder / "dog" / ".DS_Store").write_bytes(b"x")
    (folder / "dog" / "notes.csv").write_text("a,b")
    _png(folder / "cat" / ".ipynb_checkpoints" / "z.png")
    _png(folder / "cat" / "._z.png")
    with pytest.warns(UserWarning, match="Skipped 6 hidden or non-image") as rec:
        paths, labels = load_image_folder(folder)
    message = str(rec[0].message)
    for name in [".git", "README.txt", ".DS_Store", "notes.csv",
                 ".ipynb_checkpoints", "._z.png"]:
        assert name in message
    assert len(paths) == 5 and sorted(set(labels)) == ["cat", "dog"]
    assert not any(".ipynb_checkpoints" in p or "._z" in p for p in paths)


def test_long_skip_lists_are_cut_with_a_count(tmp_path):
    _png(tmp_path / "a" / "1.png")
    for i in range(15):
        (tmp_path / "a" / f"n{i:02d}.txt").write_text("")
    with pytest.warns(UserWarning, match=r"Skipped 15 .* and 5 more\."):
        load_image_folder(tmp_path)


def test_custom_extensions(folder):
    with pytest.warns(UserWarning, match="Skipped 2"):
        paths, _ = load_image_folder(folder, extensions=(".PNG",))
    assert len(paths) == 3 and all(p.endswith(".png") for p in paths)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "nope")


def test_file_instead_of_folder_is_an_error(tmp_path):
    _png(tmp_path / "one.png")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        load_image_folder(tmp_path / "one.png")


def test_empty_folder_has_no_classes(tmp_path):
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path)


def test_loose_images_are_not_classes(tmp_path):
    _png(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path)


def test_empty_class_folders_are_named_in_the_error(folder):
    (folder / "bird").mkdir()
    (folder / "fish").mkdir()
    (folder / "fish" / "readme.md").write_text("")
    with pytest.raises(ValueError, match="'bird', 'fish'.*no image files"):
        load_image_folder(folder)


def test_bundled_emoji_dataset():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths, labels = load_emoji()
    classes, counts = np.unique(labels, return_counts=True)
    assert classes.tolist() == [
        "bird", "bug", "fruit", "instrument", "mammal", "sea_animal",
        "vegetable", "vehicle",
    ]  # fmt: skip
    assert len(paths) == 222 and counts.min() >= 12
    assert all(p.startswith(str(emoji_folder())) for p in paths)
    with Image.open(paths[0]) as img:
        assert img.size == (64, 64) and img.mode == "RGBA"
    assert (emoji_folder().parent / "emoji_LICENSE-Apache-2.0.txt").is_file()
