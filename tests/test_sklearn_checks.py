"""scikit-learn's estimator checks that need no data, and the data checks
recreated on image paths (with ``two_d_array=False`` sklearn yields none)."""

import copy

import numpy as np
import pytest
import torch
from conftest import make_colour_images
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import estimator_checks as ec

from sktransfer import PretrainedCNNClassifier

NAME = "PretrainedCNNClassifier"

# Checks that run as they are: no data, or data we never see.
DATA_FREE_CHECKS = [
    ec.check_no_attributes_set_in_init,
    ec.check_parameters_default_constructible,
    ec.check_get_params_invariance,
    ec.check_set_params,
    ec.check_estimator_repr,
    ec.check_estimator_cloneable,
    ec.check_mixin_order,
    ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types,
    ec.check_estimator_sparse_tag,
    ec.check_do_not_raise_errors_in_init_or_set_params,
]


@pytest.mark.parametrize("check", DATA_FREE_CHECKS, ids=lambda c: c.__name__)
def test_data_free_check(check):
    check(NAME, PretrainedCNNClassifier())


def test_check_estimator_yields_no_data_checks():
    """Documents the trap: with two_d_array=False sklearn skips data checks."""
    tags = PretrainedCNNClassifier().__sklearn_tags__()
    assert tags.input_tags.two_d_array is False and tags.input_tags.string is True
    assert tags.estimator_type == "classifier"


def test_unfitted_methods_raise_not_fitted(colour_images):
    X, _ = colour_images
    clf = PretrainedCNNClassifier()
    for method in (clf.predict, clf.predict_proba, clf.transform, clf.score):
        args = (X, np.zeros(len(X))) if method == clf.score else (X,)
        with pytest.raises(NotFittedError, match="is not fitted yet"):
            method(*args)


@pytest.fixture
def fitted(three_class_images, tiny_params):
    X, y = three_class_images
    clf = PretrainedCNNClassifier(**{**tiny_params, "max_epochs": 8})
    return clf, clf.fit(X, y), X, y


def test_fit_returns_self(fitted):
    clf, returned, _, _ = fitted
    assert returned is clf


def test_predict_proba_rows_and_column_order(fitted):
    clf, _, X, y = fitted
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert (proba >= 0).all()
    # Column k is classes_[k]: the mean probability of each true class is
    # highest in its own column.
    for k, label in enumerate(clf.classes_):
        assert proba[y == label].mean(axis=0).argmax() == k


def test_predict_is_argmax_of_proba(fitted):
    clf, _, X, _ = fitted
    np.testing.assert_array_equal(
        clf.predict(X), clf.classes_[clf.predict_proba(X).argmax(axis=1)])


def test_fit_does_not_change_params(three_class_images, tiny_params):
    X, y = three_class_images
    clf = PretrainedCNNClassifier(**tiny_params, hidden_layer_sizes=(8,),
                                  net_params={"optimizer__weight_decay": 0.01})
    before = copy.deepcopy(clf.get_params())
    clf.fit(X, y)
    assert clf.get_params() == before


def _state(est):
    out = {}
    for key, value in vars(est).items():
        if isinstance(value, torch.nn.Module):
            value = {k: v.clone() for k, v in value.state_dict().items()}
        elif key == "history_":
            value = value.to_list()
        out[key] = copy.deepcopy(value)
    return out


def _equal(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def test_predict_does_not_change_the_estimator(fitted):
    clf, _, X, _ = fitted
    before = _state(clf)
    clf.predict(X)
    clf.predict_proba(X[:5])
    clf.transform(X[:3])
    clf.score(X, clf.predict(X))
    after = _state(clf)
    assert before.keys() == after.keys()
    changed = [k for k in before if not _equal(before[k], after[k])]
    assert changed == []


def test_subset_rows_equal_whole_set_rows(fitted, tmp_path):
    clf, _, _, _ = fitted
    # Unseen images: the subset fills part of the cache, the whole set then
    # mixes cached rows and fresh ones.
    X_new, _ = make_colour_images(tmp_path, 5, classes=("red", "green", "blue"),
                                  seed=3)
    subset = [7, 2, 11]
    part = clf.predict_proba(X_new[subset])
    whole = clf.predict_proba(X_new)
    np.testing.assert_allclose(whole[subset], part, atol=1e-6)
    clone(clf).set_params(cache=False)
    uncached = clf.set_params(cache=False).predict_proba(X_new)
    np.testing.assert_allclose(uncached, whole, atol=1e-6)


def test_two_fits_same_random_state_agree(three_class_images, tiny_params):
    X, y = three_class_images
    a = PretrainedCNNClassifier(**tiny_params).fit(X, y).predict_proba(X)
    b = PretrainedCNNClassifier(**tiny_params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)


def test_refit_is_idempotent(three_class_images, tiny_params):
    X, y = three_class_images
    clf = PretrainedCNNClassifier(**tiny_params)
    first = clf.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(clf.fit(X, y).predict_proba(X), first)


def test_clone_of_fitted_is_unfitted(fitted):
    clf, _, X, _ = fitted
    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        fresh.predict(X)


def test_check_estimator_passes_what_it_yields():
    results = ec.check_estimator(PretrainedCNNClassifier(), on_fail=None)
    assert results
    assert [r["check_name"] for r in results if r["status"] != "passed"] == []
