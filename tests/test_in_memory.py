"""The estimators on every form of X: in-memory images and tables of paths."""

import os
import tempfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

import sktransfer._data as data_module
from sktransfer import (
    BadImagesError,
    PretrainedCNNClassifier,
    PretrainedFeatureExtractor,
)


@pytest.fixture(scope="module")
def pixels(colour_images):
    paths, _ = colour_images
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


FORMS = ["paths", "list of PIL", "uint8 array", "float array", "list of arrays",
         "one-column DataFrame", "Series"]


def _form(name, paths, pixels):
    return {
        "paths": paths,
        "list of PIL": [Image.fromarray(a) for a in pixels],
        "uint8 array": pixels,
        "float array": pixels.astype(np.float32) / 255,
        "list of arrays": list(pixels),
        "one-column DataFrame": pd.DataFrame({"path": paths}),
        "Series": pd.Series(list(paths), name="path"),
    }[name]


@pytest.fixture
def extractor_params():
    return dict(backbone="tiny_cnn", weights=None, random_state=0, device="cpu",
                num_workers=0, batch_size=8)


def _reads(monkeypatch):
    """Every image the datasets open, by label."""
    reads = []
    original = data_module.ImageDataset._load

    def counting(self, i):
        reads.append(self.paths.label(i))
        return original(self, i)

    monkeypatch.setattr(data_module.ImageDataset, "_load", counting)
    return reads


@pytest.mark.parametrize("form", FORMS[1:])
def test_every_form_fits_and_predicts_as_the_paths_do(
    form, colour_images, pixels, tiny_params
):
    paths, y = colour_images
    expected = PretrainedCNNClassifier(**tiny_params).fit(paths, y)
    X = _form(form, paths, pixels)
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), expected.predict_proba(paths),
                               atol=1e-6)
    assert clf.predict(X).tolist() == expected.predict(paths).tolist()
    np.testing.assert_allclose(clf.transform(X), expected.transform(paths),
                               atol=1e-6)


def test_extractor_embeds_every_form_alike(colour_images, pixels, extractor_params):
    paths, _ = colour_images
    ext = PretrainedFeatureExtractor(**extractor_params, cache=False).fit(pixels)
    expected = ext.transform(paths)
    for form in FORMS[1:]:
        np.testing.assert_allclose(ext.transform(_form(form, paths, pixels)),
                                   expected, atol=1e-6, err_msg=form)


def test_augmented_fit_and_test_time_views_on_arrays(colour_images, pixels,
                                                     tiny_params):
    paths, y = colour_images
    params = dict(tiny_params, augment=True, tta="flip", unfreeze=1)
    on_paths = PretrainedCNNClassifier(**params).fit(paths, y)
    on_pixels = PretrainedCNNClassifier(**params).fit(pixels, y)
    np.testing.assert_allclose(on_pixels.predict_proba(pixels),
                               on_paths.predict_proba(paths), atol=1e-5)


@pytest.mark.parametrize("form", ["list of PIL", "uint8 array",
                                  "one-column DataFrame"])
def test_cross_val_score_slices_every_form(form, colour_images, pixels, tiny_params):
    paths, y = colour_images
    X = _form(form, paths, pixels)
    scores = cross_val_score(PretrainedCNNClassifier(**tiny_params), X, y, cv=2)
    expected = cross_val_score(PretrainedCNNClassifier(**tiny_params), paths, y,
                               cv=2)
    np.testing.assert_allclose(scores, expected)


def test_grid_search_over_in_memory_images_with_sample_weight(
    colour_images, pixels, tiny_params
):
    _, y = colour_images
    search = GridSearchCV(PretrainedCNNClassifier(**tiny_params),
                          {"lr": [0.01, 0.05]}, cv=2)
    search.fit(list(pixels), y, sample_weight=np.linspace(0.5, 1.5, len(y)))
    assert search.best_estimator_.predict(list(pixels[:3])).shape == (3,)


def test_column_transformer_hands_over_the_image_column(
    colour_images, extractor_params
):
    paths, y = colour_images
    table = pd.DataFrame({"path": paths, "size_kb": np.arange(len(paths)) % 3},
                         index=[f"img{i}" for i in range(len(paths))])
    for column in (["path"], "path"):  # a DataFrame, then a Series
        features = ColumnTransformer([
            ("image", PretrainedFeatureExtractor(**extractor_params), column),
            ("size", "passthrough", ["size_kb"]),
        ])
        model = make_pipeline(features, LogisticRegression(max_iter=200))
        model.fit(table, y)
        assert model.predict(table.iloc[:4]).shape == (4,)
    ext = PretrainedFeatureExtractor(**extractor_params).set_output(
        transform="pandas")
    embedded = ext.fit_transform(table[["path"]])
    assert list(embedded.index) == list(table.index)
    with pytest.raises(ValueError, match=r"DataFrame with 2 columns \('path', "
                                         r"'size_kb'\)"):
        ext.transform(table)


def test_in_memory_fit_writes_no_image_to_disk(
    colour_images, pixels, tiny_params, tmp_path, monkeypatch
):
    _, y = colour_images
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("TMPDIR", str(scratch))

    def refuse(*args, **kwargs):
        raise AssertionError("an in-memory image was written to disk")

    monkeypatch.setattr(Image.Image, "save", refuse)
    cache = tmp_path / "cache"
    X = [Image.fromarray(a) for a in pixels]
    for params in (dict(cache=False), dict(cache=str(cache)),
                   dict(cache=False, augment=True)):
        clf = PretrainedCNNClassifier(**tiny_params, **params).fit(X, y)
        clf.predict(X)
    PretrainedFeatureExtractor(
        "tiny_cnn", weights=None, random_state=0, device="cpu", num_workers=0,
        cache=str(cache)).fit(pixels).transform(pixels)
    written = [os.path.join(root, f) for root, _, files in os.walk(tmp_path)
               for f in files]
    assert written and all(f.endswith(".feat") for f in written), written
    assert all(os.sep + "sktransfer-features" + os.sep in f for f in written)


def test_in_memory_features_are_cached_by_their_pixels(
    colour_images, pixels, extractor_params, monkeypatch
):
    ext = PretrainedFeatureExtractor(**extractor_params).fit(pixels)
    reads = _reads(monkeypatch)
    first = ext.transform(pixels)
    assert len(reads) == len(pixels)
    reads.clear()
    again = ext.transform([Image.fromarray(a) for a in pixels[:4]] + list(pixels[4:]))
    assert reads == ["X[0]", "X[1]", "X[2]", "X[3]"]  # other keys: PIL, not arrays
    np.testing.assert_allclose(again, first, atol=1e-6)
    reads.clear()
    ext.transform(pixels[::-1].copy())
    assert reads == []


def test_bad_array_elements_are_reported_by_index(colour_images, pixels,
                                                  tiny_params):
    _, y = colour_images
    X = pixels / 255.0
    X[[3, 10]] = np.nan
    clf = PretrainedCNNClassifier(**tiny_params)
    with pytest.raises(BadImagesError) as info:
        clf.fit(X, y)
    assert [label for label, _ in info.value.errors] == ["X[3]", "X[10]"]
    assert "NaN" in info.value.errors[0][1]
    with pytest.warns(UserWarning, match=r"X\[3\]: float pixel values include NaN"):
        clf.set_params(on_bad_image="skip").fit(X, y)
    assert [label for label, _ in clf.skipped_images_] == ["X[3]", "X[10]"]
    assert clf.n_train_images_ == len(y) - 2
    with pytest.raises(BadImagesError, match=r"X\[1\]: float pixel values"):
        clf.predict(X[9:12])


def test_unreadable_pil_image_is_skipped_by_index(colour_images, pixels,
                                                  tiny_params, tmp_path):
    paths, y = colour_images
    truncated = tmp_path / "truncated.png"
    Image.fromarray(pixels[0]).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    X = [Image.fromarray(a) for a in pixels]
    X[5] = Image.open(truncated)
    clf = PretrainedCNNClassifier(**tiny_params, on_bad_image="skip", cache=False)
    with pytest.warns(UserWarning, match=r"X\[5\]: cannot decode image"):
        clf.fit(X, y)
    assert [label for label, _ in clf.skipped_images_] == ["X[5]"]
