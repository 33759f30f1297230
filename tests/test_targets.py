"""Reading multi-label and regression targets, and their loss weights."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.sparse import csr_matrix

from sktransfer._labels import validation_split
from sktransfer._targets import (
    as_multilabel_targets,
    check_regression_targets,
    encode_multilabel,
    positive_weights,
    target_scaling,
)


@pytest.mark.parametrize("y", [
    [[0, 1], [1, 1], [0, 0]],
    np.array([[0, 1], [1, 1], [0, 0]]),
    np.array([[False, True], [True, True], [False, False]]),
    csr_matrix(np.array([[0, 1], [1, 1], [0, 0]])),
])
def test_indicator_matrices(y):
    targets = as_multilabel_targets(y)
    np.testing.assert_array_equal(targets.indicator, [[0, 1], [1, 1], [0, 0]])
    np.testing.assert_array_equal(targets.labels, [0, 1])
    assert targets.sparse is (not isinstance(y, (list, np.ndarray)))
    assert not targets.from_sets


@pytest.mark.parametrize("y, labels, indicator", [
    ([["b", "a"], ["c"], []], ["a", "b", "c"], [[1, 1, 0], [0, 0, 1], [0, 0, 0]]),
    ([[1, 2], [3, 4]], [1, 2, 3, 4], [[1, 1, 0, 0], [0, 0, 1, 1]]),
    ([{0, 1}, {1}], [0, 1], [[1, 1], [0, 1]]),
    ([["cat"], ["dog"]], ["cat", "dog"], [[1, 0], [0, 1]]),
    (pd.Series([("x",), ("x", "y")]), ["x", "y"], [[1, 0], [1, 1]]),
])
def test_label_sets(y, labels, indicator):
    targets = as_multilabel_targets(y)
    assert targets.from_sets
    np.testing.assert_array_equal(targets.labels, labels)
    np.testing.assert_array_equal(targets.indicator, indicator)


@pytest.mark.parametrize("y", [
    ["a", "b"], np.array([0, 1, 1]), np.array([[0], [1]]), pd.Series(["a", "b"]),
])
def test_single_labels_are_not_multilabel(y):
    assert as_multilabel_targets(y) is None


def test_dataframe_columns_name_the_labels():
    frame = pd.DataFrame({"red": [1, 0], "square": [1, 1]})
    targets = as_multilabel_targets(frame)
    np.testing.assert_array_equal(targets.labels, ["red", "square"])
    np.testing.assert_array_equal(targets.indicator, [[1, 1], [0, 1]])


@pytest.mark.parametrize("y, match", [
    (np.array([[0, 2], [1, 0]]), "values other than 0 and 1"),
    (np.array([["a", "b"], ["c", "d"]]), "values other than 0 and 1"),
    ([[], []], "no image has any label"),
    ([["a", 1], [2]], "cannot be sorted"),
])
def test_bad_multilabel_targets(y, match):
    with pytest.raises(ValueError, match=match):
        as_multilabel_targets(y)


def test_encoding_aligns_label_sets_to_the_fitted_labels():
    classes = np.array(["a", "b", "c"])
    encoded = encode_multilabel(classes, as_multilabel_targets([["c"], ["a", "c"]]))
    np.testing.assert_array_equal(encoded, [[0, 0, 1], [1, 0, 1]])
    with pytest.raises(ValueError, match=r"labels \['z'\] that are not in"):
        encode_multilabel(classes, as_multilabel_targets([["z"]]))
    with pytest.raises(ValueError, match="2 label columns"):
        encode_multilabel(classes, as_multilabel_targets(np.eye(2, dtype=int)))


def test_positive_weights():
    classes = np.array(["a", "b", "never", "always"])
    indicator = np.array([[1, 1, 0, 1], [0, 1, 0, 1], [0, 0, 0, 1], [0, 1, 0, 1]])
    balanced = positive_weights("balanced", classes, indicator)
    # n_negative / n_positive; a label never or always present keeps 1.
    torch.testing.assert_close(balanced, torch.tensor([3.0, 1 / 3, 1.0, 1.0]))
    given = positive_weights({"a": 2.5}, classes, indicator)
    torch.testing.assert_close(given, torch.tensor([2.5, 1.0, 1.0, 1.0]))
    assert positive_weights(None, classes, indicator) is None
    with pytest.raises(ValueError, match="keys"):
        positive_weights({"zebra": 2.0}, classes, indicator)


@pytest.mark.parametrize("y, shape", [
    ([1.5, 2, 3], (3, 1)),
    (np.array([[1, 2], [3, 4], [5, 6]]), (3, 2)),
    (np.array([True, False, True]), (3, 1)),
    (np.array([1, 2, 3], dtype=object), (3, 1)),
    (pd.DataFrame({"a": [1.0, 2, 3], "b": [4, 5, 6]}), (3, 2)),
])
def test_regression_targets(y, shape):
    values = check_regression_targets(y, 3)
    assert values.shape == shape and values.dtype == np.float64


@pytest.mark.parametrize("y, match", [
    (["a", "b", "c"], "numeric targets.*such as \\['a', 'b', 'c'\\]"),
    (np.array(["1.0", "2", "3"]), "numeric targets"),
    (np.array([1, None, 3], dtype=object), "NaN, infinity"),
    ([1.0, np.nan, 2.0], "NaN, infinity"),
    ([1.0, np.inf, 2.0], "NaN, infinity"),
    ([1.0, 2.0], "2 targets"),
    (np.zeros((3, 2, 2)), "1-D, or 2-D"),
    (csr_matrix(np.ones((3, 1))), "sparse"),
])
def test_bad_regression_targets(y, match):
    with pytest.raises(ValueError, match=match):
        check_regression_targets(y, 3)


def test_target_scaling_leaves_constant_columns_unscaled():
    mean, scale = target_scaling(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_array_equal(mean, [2.0, 5.0])
    np.testing.assert_array_equal(scale, [1.0, 1.0])


def test_validation_split_without_stratification():
    targets = np.zeros((20, 3))  # multi-label or regression rows
    train, valid = validation_split(targets, 0.2, 0, stratify=False)
    assert len(valid) == 4 and sorted([*train, *valid]) == list(range(20))
    np.testing.assert_array_equal(
        valid, validation_split(targets, 0.2, 0, stratify=False)[1])
    with pytest.raises(ValueError, match="early_stopping=False"):
        validation_split(np.zeros((1, 2)), 0.5, 0, stratify=False)
