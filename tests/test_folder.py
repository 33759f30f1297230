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
        with pytest.warns(UserWarning, match="fish/readme.md"):
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


# -- symbolic links -------------------------------------------------------

needs_symlinks = pytest.mark.skipif(
    not hasattr(os, "symlink") or os.name == "nt", reason="needs POSIX symlinks"
)


def _load_quiet(root):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        paths, labels = load_image_folder(root)
    rel = [os.path.relpath(p, root) for p in paths]
    return rel, labels.tolist(), " ".join(str(w.message) for w in rec)


@needs_symlinks
def test_a_folder_link_that_loops_is_walked_once(folder):
    os.symlink(folder / "dog", folder / "dog" / "sub" / "loop")  # dog/sub/loop -> dog
    os.symlink(folder / "cat", folder / "cat" / "self")  # cat/self -> cat
    rel, labels, message = _load_quiet(folder)
    assert len(rel) == 5 and len(set(rel)) == 5
    assert labels == ["cat", "cat", "dog", "dog", "dog"]
    assert "already listed" in message and "loop" in message


@needs_symlinks
def test_a_link_into_another_class_keeps_the_file_where_it_lives(folder):
    os.symlink(folder / "dog" / "b.png", folder / "cat" / "b_link.png")
    os.symlink(folder / "dog" / "sub", folder / "cat" / "dogs")  # a folder
    rel, labels, message = _load_quiet(folder)
    assert dict(zip(rel, labels)) == {
        os.path.join("cat", "y.webp"): "cat",
        os.path.join("cat", "z.png"): "cat",
        os.path.join("dog", "a.JPG"): "dog",
        os.path.join("dog", "b.png"): "dog",
        os.path.join("dog", "sub", "c.png"): "dog",
    }
    assert "b_link.png (a link into class 'dog'" in message
    assert os.path.join("cat", "dogs", "c.png") in message


@needs_symlinks
def test_a_link_beside_its_file_lists_the_file_once(folder):
    os.symlink(folder / "cat" / "z.png", folder / "cat" / "a_link.png")
    rel, labels, message = _load_quiet(folder)
    assert rel.count(os.path.join("cat", "z.png")) == 1
    assert os.path.join("cat", "a_link.png") not in rel and len(rel) == 5
    assert "a_link.png (the same file as" in message


@needs_symlinks
def test_links_into_a_shared_pool_take_the_class_of_the_link(tmp_path):
    pool, data = tmp_path / "pool", tmp_path / "data"
    for name in ["1.png", "2.png", "3.png"]:
        _png(pool / name)
    (data / "cat").mkdir(parents=True)
    (data / "dog").mkdir()
    os.symlink(pool / "1.png", data / "cat" / "1.png")
    os.symlink(pool / "2.png", data / "dog" / "2.png")
    os.symlink(pool / "3.png", data / "cat" / "3.png")
    os.symlink(pool / "3.png", data / "dog" / "3.png")  # two labels: left out
    rel, labels, message = _load_quiet(data)
    assert list(zip(rel, labels)) == [
        (os.path.join("cat", "1.png"), "cat"),
        (os.path.join("dog", "2.png"), "dog"),
    ]
    assert "linked from classes 'cat', 'dog'" in message


@needs_symlinks
def test_broken_links_and_twin_class_folders(tmp_path):
    _png(tmp_path / "data" / "cat" / "1.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "data" / "cat" / "2.png")
    rel, _, message = _load_quiet(tmp_path / "data")
    assert rel == [os.path.join("cat", "1.png")]
    assert "2.png (a link to nothing)" in message
    os.symlink(tmp_path / "data" / "cat", tmp_path / "data" / "kitten")
    with pytest.raises(ValueError, match="'cat' and 'kitten' .* the same folder"):
        load_image_folder(tmp_path / "data")


# -- the walker the command line shares ------------------------------------

def test_list_images_skips_what_load_image_folder_skips(folder):
    from sktransfer._folder import list_images

    _png(folder / "dog" / ".hidden" / "x.png")
    (folder / "dog" / "notes.txt").write_text("")
    one = str(folder / "cat" / "z.png")
    with pytest.warns(UserWarning, match="Skipped 2 hidden or non-image") as rec:
        paths = list_images([folder / "dog", one])
    assert ".hidden" in str(rec[0].message) and "notes.txt" in str(rec[0].message)
    assert [os.path.relpath(p, folder) for p in paths] == [
        os.path.join("dog", "a.JPG"), os.path.join("dog", "b.png"),
        os.path.join("dog", "sub", "c.png"), os.path.join("cat", "z.png"),
    ]
    with pytest.raises(ValueError, match="does not exist"):
        list_images([folder / "nope"])
    (folder / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no image files"):
        list_images([folder / "empty"])


@needs_symlinks
def test_list_images_lists_a_linked_file_once(folder):
    from sktransfer._folder import list_images

    os.symlink(folder / "dog", folder / "cat" / "dog_again")
    with pytest.warns(UserWarning, match="symbolic link"):
        paths = list_images([folder / "dog", folder / "cat"])
    assert len(paths) == 5
    assert len({os.path.realpath(p) for p in paths}) == 5
