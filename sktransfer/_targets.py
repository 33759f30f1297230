"""Targets other than one label per image: multi-label sets and real values.

Multi-label targets come as an indicator matrix (dense, sparse, or a pandas
DataFrame whose columns name the labels) or as one collection of labels per
image (``[["cat"], ["cat", "dog"], []]``, as ``MultiLabelBinarizer`` takes
them). Both become a :class:`MultiLabelTargets`: a 0/1 matrix and the label
of each column. Regression targets become a float matrix with one column per
output, standardised by the training mean and standard deviation.
"""

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.sparse import issparse

from ._labels import _check_class_weight_dict
from ._warnings import user_stacklevel

__all__ = [
    "MultiLabelTargets",
    "as_multilabel_targets",
    "check_regression_targets",
    "encode_multilabel",
    "positive_weights",
    "target_scaling",
    "warn_constant_labels",
]

_LABEL_SETS = (list, tuple, set, frozenset, np.ndarray)


@dataclass(frozen=True)
class MultiLabelTargets:
    """A multi-label ``y``: a 0/1 matrix and the label of each column.

    Attributes
    ----------
    indicator : ndarray of shape (n_samples, n_labels), uint8
    labels : ndarray of shape (n_labels,)
        Column labels: ``0 .. k-1`` for a matrix, a DataFrame's column
        names, or the sorted labels of label sets.
    sparse : bool
        ``y`` was a sparse matrix (predictions are then sparse too).
    from_sets : bool
        ``y`` was one collection of labels per image.
    """

    indicator: np.ndarray
    labels: np.ndarray
    sparse: bool = False
    from_sets: bool = False

    def __len__(self):
        return len(self.indicator)

    def __getitem__(self, rows):
        return replace(self, indicator=self.indicator[rows])


def as_multilabel_targets(y):
    """``y`` as :class:`MultiLabelTargets`, or None when it is single-label.

    A 2-D array-like of 0/1 values with more than one column is an indicator
    matrix; any other sequence of collections is one set of labels per image
    (so ``[[1, 2], [3]]``, ``[["cat"], ["dog"]]`` and ``[{0, 1}, {1}]`` are
    label sets, while ``[[0, 1], [1, 1]]`` is, as for scikit-learn's
    ``type_of_target``, an indicator matrix). A 2-D numpy array with one
    column is a column of single labels.
    """
    if issparse(y):
        return _indicator(y.toarray(), np.arange(y.shape[1]), sparse=True)
    columns = getattr(y, "columns", None)
    if columns is not None and getattr(y, "ndim", 2) == 2:  # a DataFrame
        values = y.to_numpy()
        if values.shape[1] < 2:
            return None
        return _indicator(values, np.asarray(list(columns)))
    sets = _label_sets(y)
    if sets is not None:
        return _from_label_sets(sets)
    if isinstance(y, (list, tuple)):
        try:
            y = np.asarray(y)
        except ValueError:
            return None  # left to the single-label checks to report
    if getattr(y, "ndim", None) == 2 and y.shape[1] > 1:
        return _indicator(np.asarray(y), np.arange(y.shape[1]))
    return None


def _label_sets(y):
    """The label sets of ``y``, or None if ``y`` is not a sequence of them."""
    if isinstance(y, (str, bytes)) or not hasattr(y, "__len__"):
        return None
    if isinstance(y, np.ndarray) and (y.dtype != object or y.ndim != 1):
        return None
    items = y.tolist() if hasattr(y, "tolist") else list(y)
    if not items or not all(
        isinstance(v, _LABEL_SETS) and not isinstance(v, (str, bytes))
        for v in items
    ):
        return None
    if not any(isinstance(v, (set, frozenset)) for v in items):
        try:
            matrix = np.asarray(items)
        except ValueError:  # ragged: label sets of different sizes
            matrix = None
        if (matrix is not None and matrix.ndim == 2 and matrix.shape[1] > 1
                and matrix.dtype.kind in "biu" and np.isin(matrix, (0, 1)).all()):
            return None
    return [list(v.tolist() if isinstance(v, np.ndarray) else v) for v in items]


def _from_label_sets(sets):
    seen = {label for labels in sets for label in labels}
    if not seen:
        raise ValueError(
            "y is multi-label, but no image has any label: every label set is "
            "empty. Give the images their labels."
        )
    try:
        labels = np.array(sorted(seen))
    except TypeError:
        raise ValueError(
            f"The labels in y cannot be sorted (they mix types: "
            f"{sorted({type(v).__name__ for v in seen})}); use labels of one "
            "type, such as all str."
        ) from None
    indicator = np.zeros((len(sets), len(labels)), dtype=np.uint8)
    for i, image_labels in enumerate(sets):
        indicator[i, np.searchsorted(labels, list(image_labels))] = 1
    return MultiLabelTargets(indicator, labels, from_sets=True)


def _indicator(values, labels, sparse=False):
    values = np.asarray(values)
    if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
        example = values[~np.isin(values, (0, 1))].ravel()[:3].tolist() if (
            values.dtype.kind in "biuf") else values.ravel()[:3].tolist()
        raise ValueError(
            f"y is a 2-D array of shape {values.shape}, which is read as a "
            "multi-label indicator matrix (one column per label, 1 where the "
            f"image has the label), but it holds values other than 0 and 1, "
            f"such as {example}. Pass 0/1 values, or one collection of labels "
            "per image (e.g. [['cat'], ['cat', 'dog']]); several multi-class "
            "outputs per image are not supported."
        )
    return MultiLabelTargets(values.astype(np.uint8), labels, sparse=sparse)


def encode_multilabel(classes, targets):
    """``targets``' indicator with the columns of the fitted ``classes``."""
    if not targets.from_sets:
        if len(targets.labels) != len(classes) or not np.array_equal(
            targets.labels, classes
        ):
            raise ValueError(
                f"y has {len(targets.labels)} label columns "
                f"{targets.labels.tolist()}, but the model was fitted on the "
                f"labels {classes.tolist()}. Pass the same columns, or refit "
                "from scratch."
            )
        return targets.indicator
    unknown = np.setdiff1d(targets.labels, classes)
    if len(unknown):
        raise ValueError(
            f"y contains labels {unknown.tolist()} that are not in the model's "
            f"labels {classes.tolist()}. Continued training (warm_start, "
            "partial_fit) keeps the labels of the first fit; pass every label "
            "there (partial_fit(..., classes=...)) or refit from scratch."
        )
    encoded = np.zeros((len(targets), len(classes)), dtype=np.uint8)
    encoded[:, np.searchsorted(classes, targets.labels)] = targets.indicator
    return encoded


def positive_weights(class_weight, classes, indicator):
    """Per-label weights of the positive examples (``pos_weight``), or None.

    ``"balanced"`` gives each label ``n_negative / n_positive``, so its
    positives weigh as much as its negatives; a label that is never (or
    always) present keeps weight 1. A dict maps labels to weights; labels
    left out weigh 1.
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, dict):
        _check_class_weight_dict(class_weight, classes)
        weights = [float(class_weight.get(c, 1.0)) for c in classes.tolist()]
        return torch.as_tensor(weights, dtype=torch.float32)
    n_pos = indicator.sum(axis=0).astype(np.float64)
    n_neg = len(indicator) - n_pos
    weights = np.ones(len(classes))
    both = (n_pos > 0) & (n_neg > 0)
    weights[both] = n_neg[both] / n_pos[both]
    return torch.as_tensor(weights, dtype=torch.float32)


def warn_constant_labels(classes, indicator):
    """Warn about labels that every training image has, or none has.

    Such a label carries no information to learn from: the model learns to
    predict it (nearly) always or never. Not an error, because a rare label
    is often absent from a cross-validation fold's training part.
    """
    n_pos = indicator.sum(axis=0)
    never = classes[n_pos == 0].tolist()
    always = classes[n_pos == len(indicator)].tolist()
    parts = []
    if never:
        parts.append(f"no training image has the label(s) {never}")
    if always:
        parts.append(f"every training image has the label(s) {always}")
    if parts:
        warnings.warn(
            f"In this multi-label fit {' and '.join(parts)}; the model will "
            "predict them as (nearly) always absent or present. Add images with "
            "and without each label, or drop the constant columns.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def check_regression_targets(y, n_samples):
    """``y`` as a float64 matrix with one column per output.

    Raises
    ------
    ValueError
        For non-numeric, missing or infinite values, a sparse ``y``, or a
        number of rows other than ``n_samples``.
    """
    if issparse(y):
        raise ValueError(
            "y is a sparse matrix; regression targets must be dense. Pass a "
            "1-D array of values, or a 2-D array with one column per output."
        )
    values = y.to_numpy() if hasattr(y, "to_numpy") else y
    try:
        values = np.asarray(values)
    except ValueError as exc:
        raise ValueError(
            f"y must be an array of numbers, one row per image: {exc}"
        ) from None
    if values.dtype.kind not in "biuf":
        try:
            converted = values.astype(np.float64)
        except (TypeError, ValueError):
            converted = None
        if converted is None or values.dtype.kind in "USc":
            example = values.ravel()[:3].tolist()
            raise ValueError(
                "PretrainedCNNRegressor needs numeric targets, but y holds "
                f"{values.dtype.name} values such as {example}. Convert them to "
                "numbers; for class labels use PretrainedCNNClassifier."
            )
        values = converted
    values = values.astype(np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(
            f"y must be 1-D, or 2-D with one column per output; got shape "
            f"{values.shape}."
        )
    if len(values) != n_samples:
        raise ValueError(
            f"X and y have inconsistent numbers of samples: {n_samples} image "
            f"paths and {len(values)} targets."
        )
    if not np.isfinite(values).all():
        raise ValueError(
            "y contains NaN, infinity or missing values; every image needs a "
            "finite target. Drop those images or fill in their values."
        )
    return values


def target_scaling(values):
    """Mean and standard deviation of each column; a constant column gets 1."""
    mean = values.mean(axis=0)
    scale = values.std(axis=0)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    return mean, scale
