"""Multi-label targets in PretrainedCNNClassifier: two independent properties
of generated images (red or green; a white square or none) as the labels
"red", "green" and "square", so that every image has at least one."""

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.sparse import csr_matrix, issparse
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import KFold, cross_val_score
from sklearn.multioutput import MultiOutputClassifier
from sklearn.preprocessing import MultiLabelBinarizer

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor


@pytest.fixture(scope="module")
def two_label_images(tmp_path_factory):
    """24 PNGs; the columns of ``Y``: red, green, a white square."""
    folder = tmp_path_factory.mktemp("two_labels")
    rng = np.random.default_rng(0)
    paths, rows = [], []
    for i in range(24):
        red, square = i % 2 == 0, (i // 2) % 2 == 0
        arr = np.empty((32, 32, 3), dtype=np.uint8)
        arr[:] = (200, 30, 30) if red else (30, 200, 30)
        arr = np.clip(arr + rng.integers(-25, 25, arr.shape), 0, 255).astype(np.uint8)
        if square:
            arr[8:24, 8:24] = 255
        path = folder / f"image_{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
        rows.append([int(red), int(not red), int(square)])
    return np.array(paths, dtype=object), np.array(rows)


def _label_sets(Y):
    names = ("red", "green", "square")
    return [[name for name, on in zip(names, row) if on] for row in Y]


@pytest.fixture
def epochs_params(tiny_params):
    return dict(tiny_params, max_epochs=25)


@pytest.fixture
def probe_params(tiny_params):
    return dict(tiny_params, head_solver="lbfgs", C=100.0)


def test_indicator_matrix_trains_a_sigmoid_head(two_label_images, epochs_params):
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(**epochs_params).fit(X, Y)
    assert clf.multilabel_ and not clf.sparse_output_
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    proba = clf.predict_proba(X)
    assert proba.shape == (24, 3) and ((proba >= 0) & (proba <= 1)).all()
    assert not np.allclose(proba.sum(axis=1), 1.0)  # independent labels
    predicted = clf.predict(X)
    assert predicted.shape == (24, 3) and predicted.dtype == np.int64
    np.testing.assert_array_equal(predicted, (proba > 0.5).astype(int))
    assert accuracy_score(Y, predicted) == 1.0
    assert clf.score(X, Y) == 1.0
    assert clf.transform(X).shape == (24, clf.n_features_out_)
    assert "valid_acc" not in clf.history_[-1]


def test_probe_is_one_logistic_regression_per_label(two_label_images, probe_params):
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(**probe_params).fit(X, Y)
    assert len(clf.history_) == 1  # the probe is the whole fit
    extractor = PretrainedFeatureExtractor(
        backbone="tiny_cnn", weights=None, random_state=0, device="cpu")
    features = extractor.fit(X).transform(X)
    reference = MultiOutputClassifier(
        LogisticRegression(C=probe_params["C"], tol=1e-10, max_iter=10_000)
    ).fit(features, Y)
    expected = np.column_stack([p[:, 1] for p in reference.predict_proba(features)])
    np.testing.assert_allclose(clf.predict_proba(X), expected, atol=2e-3)


def test_label_sets_give_sorted_label_columns(two_label_images, probe_params):
    X, Y = two_label_images
    sets = _label_sets(Y)
    clf = PretrainedCNNClassifier(**probe_params).fit(X, sets)
    np.testing.assert_array_equal(clf.classes_, ["green", "red", "square"])
    expected = MultiLabelBinarizer(classes=clf.classes_).fit_transform(sets)
    np.testing.assert_array_equal(clf.predict(X), expected)
    assert clf.score(X, sets) == 1.0  # score takes label sets too


def test_sparse_in_sparse_out(two_label_images, probe_params):
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(**probe_params).fit(X, csr_matrix(Y))
    predicted = clf.predict(X)
    assert issparse(predicted) and clf.sparse_output_
    np.testing.assert_array_equal(predicted.toarray(), Y)
    assert f1_score(csr_matrix(Y), predicted, average="samples") == 1.0


def test_dataframe_columns_become_the_classes(two_label_images, probe_params):
    X, Y = two_label_images
    frame = pd.DataFrame(Y, columns=["red", "green", "square"])
    clf = PretrainedCNNClassifier(**probe_params).fit(X, frame)
    np.testing.assert_array_equal(clf.classes_, ["red", "green", "square"])
    np.testing.assert_array_equal(clf.predict(X), Y)


def test_threshold_decides_predict(two_label_images, probe_params):
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(**dict(probe_params, C=0.01)).fit(X, Y)
    proba = clf.predict_proba(X)
    for threshold in (0.3, 0.5, 0.7):
        clf.set_params(threshold=threshold)  # no refit needed
        np.testing.assert_array_equal(clf.predict(X), proba > threshold)


def test_cross_val_score_f1_samples(two_label_images, probe_params):
    X, Y = two_label_images
    scores = cross_val_score(
        PretrainedCNNClassifier(**probe_params), X, Y, scoring="f1_samples",
        cv=KFold(3, shuffle=True, random_state=0),
    )
    assert scores.min() > 0.9


def test_early_stopping_holds_out_an_unstratified_split(
    two_label_images, epochs_params
):
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(
        **dict(epochs_params, max_epochs=3, early_stopping=True,
               validation_fraction=0.25)
    ).fit(X, Y)
    assert clf.history_[-1, "valid_loss"] > 0


def test_sample_weight_and_smoothing_in_the_epoch_loop(
    two_label_images, epochs_params
):
    X, Y = two_label_images
    params = dict(epochs_params, max_epochs=2)
    plain = PretrainedCNNClassifier(**params).fit(X, Y).predict_proba(X)
    ones = PretrainedCNNClassifier(**params).fit(
        X, Y, sample_weight=np.ones(len(X))).predict_proba(X)
    np.testing.assert_allclose(ones, plain, atol=1e-5)
    weighted = PretrainedCNNClassifier(**params).fit(
        X, Y, sample_weight=np.arange(1, 25)).predict_proba(X)
    assert not np.allclose(weighted, plain, atol=1e-3)
    smoothed = PretrainedCNNClassifier(**dict(params, max_epochs=25),
                                       label_smoothing=0.4).fit(X, Y)
    assert smoothed.predict_proba(X).max() < 0.9  # targets pulled to 0.2/0.8


@pytest.mark.parametrize("solver", ["lbfgs", "epochs"])
def test_balanced_class_weight_is_negatives_over_positives(
    two_label_images, tiny_params, solver
):
    X, Y = two_label_images
    both = np.column_stack([Y, Y[:, 0] & Y[:, 2]])  # 12, 12, 12 and 6 of 24
    params = dict(tiny_params, head_solver=solver, max_epochs=2)

    def proba(class_weight):
        clf = PretrainedCNNClassifier(**params, class_weight=class_weight)
        return clf.fit(X, both).predict_proba(X)

    balanced = proba("balanced")
    np.testing.assert_allclose(balanced, proba({3: 3.0}), atol=1e-6)
    assert not np.allclose(balanced, proba(None), atol=1e-4)
    with pytest.raises(ValueError, match="class_weight has keys"):
        proba({"blue": 2.0})


def test_smoothing_in_the_probe(two_label_images, probe_params):
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(**probe_params, label_smoothing=0.4).fit(X, Y)
    proba = clf.predict_proba(X)
    assert 0.7 < proba.max() < 0.85  # the optimum of a 0.2/0.8 target
    np.testing.assert_array_equal(clf.predict(X), Y)


def test_a_constant_label_warns(two_label_images, probe_params):
    X, Y = two_label_images
    for column, match in ((0, "no training image has the label"),
                          (1, "every training image has the label")):
        constant = np.column_stack([Y, np.full(len(Y), column)])
        with pytest.warns(UserWarning, match=match):
            clf = PretrainedCNNClassifier(**probe_params).fit(X, constant)
        np.testing.assert_array_equal(clf.predict(X)[:, 3], column)


def test_wrong_multilabel_targets_raise(two_label_images, probe_params):
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(**probe_params)
    with pytest.raises(ValueError, match="values other than 0 and 1"):
        clf.fit(X, Y * 2)
    with pytest.raises(ValueError, match="no image has any label"):
        clf.fit(X, [[] for _ in X])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        clf.fit(X, Y[:-1])
    clf.fit(X, Y)
    warm = clf.set_params(warm_start=True, head_solver="epochs", max_epochs=1)
    with pytest.raises(ValueError, match="4 label columns"):
        warm.fit(X, np.column_stack([Y, Y[:, 0]]))
    with pytest.raises(ValueError, match="fitted on multi-label targets"):
        warm.fit(X, Y[:, 0])
    single = PretrainedCNNClassifier(**probe_params).fit(X, Y[:, 0])
    with pytest.raises(ValueError, match="fitted on single targets"):
        single.set_params(warm_start=True).fit(X, Y)


def test_partial_fit_with_every_label_up_front(two_label_images, epochs_params):
    X, Y = two_label_images
    sets = _label_sets(Y)
    clf = PretrainedCNNClassifier(**epochs_params)
    colours = [[label for label in s if label != "square"] for s in sets]
    with pytest.warns(UserWarning, match=r"has the label\(s\) \['square'\]"):
        clf.partial_fit(X, colours, classes=["red", "green", "square"])
    np.testing.assert_array_equal(clf.classes_, ["green", "red", "square"])
    clf.partial_fit(X, sets)
    assert clf.predict(X).shape == (24, 3) and len(clf.history_) == 2


def test_test_time_augmentation_averages_label_probabilities(
    two_label_images, probe_params
):
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(**probe_params).fit(X, Y)
    plain = clf.predict_proba(X)
    flipped = clf.set_params(tta="flip").predict_proba(X)
    assert flipped.shape == plain.shape and ((flipped >= 0) & (flipped <= 1)).all()
    np.testing.assert_array_equal(clf.predict(X), Y)


@pytest.mark.parametrize("form", ["indicator", "sparse", "sets"])
def test_save_load_and_pickle_round_trip(two_label_images, probe_params, tmp_path,
                                         form):
    X, Y = two_label_images
    y = {"indicator": Y, "sparse": csr_matrix(Y), "sets": _label_sets(Y)}[form]
    clf = PretrainedCNNClassifier(**probe_params, threshold=0.4).fit(X, y)
    for loaded in (
        PretrainedCNNClassifier.load(clf.save(tmp_path / "model")),
        pickle.loads(pickle.dumps(clf)),
    ):
        np.testing.assert_array_equal(loaded.classes_, clf.classes_)
        assert loaded.classes_.dtype == clf.classes_.dtype
        assert (loaded.multilabel_, loaded.sparse_output_, loaded.threshold) == (
            True, form == "sparse", 0.4)
        np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
        predicted = loaded.predict(X)
        assert issparse(predicted) == (form == "sparse")


def test_tags_and_clone(two_label_images, probe_params):
    clf = PretrainedCNNClassifier(**probe_params)
    tags = clf.__sklearn_tags__()
    assert tags.classifier_tags.multi_label and tags.target_tags.multi_output
    X, Y = two_label_images
    fitted = clf.fit(X, Y)
    fresh = clone(fitted)
    assert fresh.get_params() == fitted.get_params()
    assert not hasattr(fresh, "classes_")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # single labels again: no leftovers
        np.testing.assert_array_equal(fresh.fit(X, Y[:, 1]).classes_, [0, 1])
    assert not fresh.multilabel_


@pytest.mark.parametrize("inputs", [{"augment": True}, {"cache": False}])
def test_rows_of_labels_reach_training_without_the_cache(
    two_label_images, tiny_params, inputs
):
    """Decoded and file datasets carry indicator rows (and weights) too."""
    X, Y = two_label_images
    clf = PretrainedCNNClassifier(**dict(tiny_params, max_epochs=1), **inputs)
    clf.fit(X, Y, sample_weight=np.linspace(0.5, 1.5, len(X)))
    assert clf.predict(X).shape == Y.shape
