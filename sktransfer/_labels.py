"""Labels and weights: check targets, encode classes, weigh and split them."""

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d

__all__ = [
    "check_targets",
    "class_loss_weights",
    "encode_labels",
    "fit_classes",
    "normalized_sample_weight",
    "validation_split",
]


def check_targets(y, n_samples):
    """``y`` as a 1-D array of class labels, one per image path."""
    y = column_or_1d(y, warn=True)
    if len(y) != n_samples:
        raise ValueError(
            f"X and y have inconsistent numbers of samples: {n_samples} image "
            f"paths and {len(y)} labels."
        )
    check_classification_targets(y)
    return y


def fit_classes(y):
    """Sorted classes of ``y`` (at least two) and ``y`` encoded as indices."""
    encoder = LabelEncoder().fit(y)
    if len(encoder.classes_) < 2:
        raise ValueError(
            "The training data must contain at least two classes; got only "
            f"{encoder.classes_.tolist()}."
        )
    return encoder.classes_, encoder.transform(y)


def encode_labels(classes, y):
    """``y`` as indices into the fitted ``classes``; unknown labels raise."""
    unknown = np.setdiff1d(np.unique(y), classes)
    if len(unknown):
        raise ValueError(
            f"y contains labels {unknown.tolist()} that are not in the "
            f"model's classes {classes.tolist()}. Continued training "
            "(warm_start, partial_fit) keeps the classes of the first fit; "
            "pass every class there (partial_fit(..., classes=...)) or "
            "refit from scratch."
        )
    return np.searchsorted(classes, y)


def class_loss_weights(class_weight, classes, y):
    """Per-class weights for the loss as a float tensor, or None."""
    if class_weight is None:
        return None
    if isinstance(class_weight, dict):
        _check_class_weight_dict(class_weight, classes)
    weights = compute_class_weight(class_weight, classes=classes, y=y)
    return torch.as_tensor(weights, dtype=torch.float32)


def _check_class_weight_dict(class_weight, classes):
    """Reject keys that are not classes and weights that are not finite >= 0."""
    known = set(classes.tolist())
    unknown = [k for k in class_weight if k not in known]
    if unknown:
        raise ValueError(
            f"class_weight has keys {unknown!r} that are not classes of y; "
            f"the classes are {classes.tolist()!r}. Use those labels, with "
            "their type (1 and '1' differ), as the keys."
        )
    bad = {}
    for key, value in class_weight.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            bad[key] = value
            continue
        if not np.isfinite(number) or number < 0:
            bad[key] = value
    if bad:
        raise ValueError(
            f"class_weight must map classes to finite weights >= 0; got {bad!r}. "
            "Give every class a non-negative number (0 ignores the class, 1 is "
            "the default), or use class_weight='balanced'."
        )
    if all(float(class_weight.get(c, 1.0)) == 0 for c in known):
        raise ValueError(
            "class_weight is 0 for every class, which leaves nothing to learn "
            "from; give at least one class a positive weight."
        )


def normalized_sample_weight(sample_weight, train_idx):
    """``sample_weight`` scaled to mean 1 over the training rows, or None.

    Mean 1 makes uniform weights train exactly as no weights, and keeps the
    meaning of ``lr``.
    """
    if sample_weight is None:
        return None
    total = sample_weight[train_idx].sum()
    if not total > 0:
        raise ValueError(
            "sample_weight is zero for every training image; give some "
            "images a positive weight."
        )
    return torch.as_tensor(
        sample_weight * (len(train_idx) / total), dtype=torch.float32
    )


def validation_split(y_encoded, fraction, seed, *, stratify=True):
    """Indices of the training rows and of a held-out part, stratified by
    class unless ``stratify=False`` (multi-label and regression targets).

    With ``fraction=None`` every row trains and the second item is None.
    """
    indices = np.arange(len(y_encoded))
    if fraction is None:
        return indices, None
    if not stratify:
        n_valid = int(np.ceil(fraction * len(indices)))
        if not 0 < n_valid < len(indices):
            raise ValueError(
                f"Cannot hold out validation_fraction={fraction} of "
                f"{len(indices)} images and train on the rest; add images, "
                "change validation_fraction, or set early_stopping=False."
            )
        return train_test_split(indices, test_size=n_valid, random_state=seed)
    try:
        return train_test_split(
            indices, test_size=fraction, stratify=y_encoded, random_state=seed
        )
    except ValueError as exc:
        raise ValueError(
            f"Cannot hold out a stratified validation_fraction={fraction} of "
            f"{len(y_encoded)} images: {exc}. Every class needs at least 2 "
            "images and the held-out part at least one per class; add images, "
            "change validation_fraction, or set early_stopping=False."
        ) from exc
