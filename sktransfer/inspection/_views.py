"""What both displays share: the fitted-model check, labels, images as the
network sees them, and a grid of axes to draw them on."""

import math
from numbers import Integral

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from .._data import check_image_paths
from .._images import BadImagesError, ImageLoadError, load_rgb_image
from .._transforms import eval_transform

__all__ = [
    "check_classifier",
    "check_positive_int",
    "class_indices",
    "image_grid",
    "load_views",
]


def check_classifier(estimator, display):
    """Raise unless ``estimator`` is a fitted :class:`PretrainedCNNClassifier`."""
    from .._classifier import PretrainedCNNClassifier

    if not isinstance(estimator, PretrainedCNNClassifier):
        raise TypeError(
            f"{display}.from_estimator needs a fitted "
            f"sktransfer.PretrainedCNNClassifier; got {type(estimator).__name__}. "
            "Pass the classifier itself (in a Pipeline, its last step)."
        )
    check_is_fitted(estimator)


def check_positive_int(value, name, allow_none=False):
    """``value`` if it is an int >= 1 (or None when allowed), else ValueError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        also = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an int >= 1{also}; got {value!r}.")
    return int(value)


def class_indices(classes, labels, name):
    """Indices of ``labels`` in the sorted ``classes``; unknown labels raise."""
    labels = np.asarray(labels)
    known = np.isin(labels, classes)
    if not known.all():
        unknown = np.unique(labels[~known]).tolist()
        raise ValueError(
            f"{name} contains labels {unknown!r} that are not classes of the "
            f"model; its classes are {classes.tolist()!r}. Use those labels, "
            "with their type (1 and '1' differ)."
        )
    return np.searchsorted(classes, labels)


def load_views(estimator, paths):
    """The images at ``paths`` as the fitted network sees them.

    Each file is opened as ``predict`` opens it and passed through the
    evaluation transform (resize, centre crop, normalisation).

    Returns
    -------
    inputs : torch.Tensor of shape (n, 3, S, S)
        Normalised network inputs, on the CPU.
    images : ndarray of shape (n, S, S, 3), dtype=uint8
        The same crops, un-normalised, for display.
    """
    paths = check_image_paths(paths)
    prep = estimator.preprocessing_
    transform = eval_transform(prep)
    inputs, errors = [], []
    for path in paths:
        try:
            image = load_rgb_image(
                path, max_image_pixels=estimator.max_image_pixels,
                min_side=prep.resize_size, intensity=prep.intensity,
            )
        except ImageLoadError as exc:
            errors.append((path, exc.reason))
            continue
        inputs.append(transform(image))
    if errors:
        raise BadImagesError(errors, "fix or remove these files")
    inputs = torch.stack(inputs)
    # Undoing the normalisation shows exactly the pixels the network got.
    mean = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std = torch.tensor(prep.std).view(1, -1, 1, 1)
    pixels = (inputs * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    # Displays draw RGB: a grey model's one channel is shown as grey.
    pixels = pixels.expand(-1, 3, -1, -1)
    return inputs, pixels.permute(0, 2, 3, 1).numpy()


def image_grid(n, n_cols, ax, display):
    """A figure and an array of at least ``n`` Axes to draw ``n`` images on.

    ``ax`` is None (a new figure), one Axes (split into the grid, as
    ``PartialDependenceDisplay`` splits a bounding Axes; a single image is
    drawn on it directly) or an array-like of Axes. Axes beyond the ``n``th
    are turned off.
    """
    from .._plotting import import_pyplot

    plt = import_pyplot()
    n_cols = min(n, check_positive_int(n_cols, "n_cols", allow_none=True)
                 or math.ceil(math.sqrt(n)))
    n_rows = math.ceil(n / n_cols)
    if ax is None:
        fig, axes = plt.subplots(
            n_rows, n_cols, figsize=(2.4 * n_cols, 2.6 * n_rows), squeeze=False,
            layout="constrained",
        )
    elif hasattr(ax, "get_subplotspec"):  # a single Axes
        fig = ax.figure
        if n == 1:
            axes = np.array([[ax]], dtype=object)
        else:
            spec = ax.get_subplotspec()
            if spec is None:
                raise ValueError(
                    f"ax must be an Axes of a subplot grid to split into {n} "
                    "panels (e.g. from plt.subplots()), an array-like of "
                    f"{n} Axes, or None; got an Axes placed with add_axes."
                )
            ax.set_axis_off()
            grid = spec.subgridspec(n_rows, n_cols)
            axes = np.array(
                [[fig.add_subplot(grid[r, c]) for c in range(n_cols)]
                 for r in range(n_rows)], dtype=object,
            )
    else:
        axes = np.asarray(ax, dtype=object)
        if axes.size < n:
            raise ValueError(
                f"ax holds {axes.size} Axes but {display} draws {n} images; "
                f"pass at least {n} Axes, a single Axes to split, or ax=None."
            )
        fig = axes.flat[0].figure
    for extra in axes.flat[n:]:
        extra.set_axis_off()
    return fig, axes
