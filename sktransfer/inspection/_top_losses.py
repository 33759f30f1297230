"""The images a fitted classifier gets most wrong, as fastai's ``plot_top_losses``."""

import numpy as np

from .._data import check_image_paths
from .._labels import check_targets
from .._plotting import import_pyplot
from ._views import (
    check_classifier,
    check_positive_int,
    class_indices,
    image_grid,
    load_views,
)

__all__ = ["TopLossesDisplay"]


class TopLossesDisplay:
    """The images of highest loss: ``-log`` of the true class's probability.

    Sorting by this cross-entropy loss puts first the images the model is
    most confidently wrong about (often mislabelled or ambiguous ones),
    then those it gets right only hesitantly. It is best created with
    :meth:`from_estimator`.

    Needs matplotlib for :meth:`plot` (``pip install "sktransfer[plot]"``).

    Parameters
    ----------
    images : ndarray of shape (k, S, S, 3), dtype=uint8
        The images, as the network sees them, highest loss first.
    indices : ndarray of shape (k,)
        Position of each image in the ``X`` it was chosen from.
    losses : ndarray of shape (k,)
        Cross-entropy loss of each image, in decreasing order.
    y_true : ndarray of shape (k,)
        True label of each image.
    y_pred : ndarray of shape (k,)
        Predicted label of each image.
    proba_true : ndarray of shape (k,)
        Predicted probability of the true label (``exp(-losses)``).
    proba_pred : ndarray of shape (k,)
        Predicted probability of the predicted label.

    Attributes
    ----------
    figure_ : matplotlib Figure
        Figure holding the panels, set by :meth:`plot`.
    axes_ : ndarray of matplotlib Axes
        One Axes per panel (those beyond the last image are turned off),
        set by :meth:`plot`.

    See Also
    --------
    GradCAMDisplay : Where in each image the evidence for a class lies.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sktransfer import PretrainedCNNClassifier
    >>> from sktransfer.datasets import load_emoji
    >>> from sktransfer.inspection import TopLossesDisplay
    >>> X, y = load_emoji()
    >>> clf = PretrainedCNNClassifier("resnet18", weights=None, image_size=64,
    ...                               max_epochs=1, random_state=0).fit(X, y)
    >>> display = TopLossesDisplay.from_estimator(clf, X, y, k=4)
    >>> len(display.indices), bool(display.losses[0] >= display.losses[-1])
    (4, True)
    """

    def __init__(self, images, indices, losses, y_true, y_pred, proba_true,
                 proba_pred):
        self.images = images
        self.indices = indices
        self.losses = losses
        self.y_true = y_true
        self.y_pred = y_pred
        self.proba_true = proba_true
        self.proba_pred = proba_pred

    @classmethod
    def from_estimator(cls, estimator, X, y, *, k=9, n_cols=None, ax=None):
        """Find the ``k`` images of highest loss and plot them.

        The losses come from the estimator's ``predict_proba`` (with its
        ``tta``, if any); ties keep the order of ``X``. Use held-out
        images: on the training images the losses mostly show what the
        model memorised.

        Parameters
        ----------
        estimator : PretrainedCNNClassifier
            A fitted classifier (also one loaded with ``load`` or joblib).
        X : array-like of shape (n_images,)
            Image file paths.
        y : array-like of shape (n_images,)
            Their true labels, all among the estimator's ``classes_``.
        k : int, default=9
            How many images to show (all of them if ``X`` has fewer).
        n_cols : int or None, default=None
            Panels per row; None makes a near-square grid.
        ax : matplotlib Axes, array-like of Axes or None, default=None
            Where to draw: None makes a new figure; one Axes is split into
            the grid; an array-like needs an Axes per image.

        Returns
        -------
        display : TopLossesDisplay
            The chosen images and their losses, drawn on ``figure_``.
        """
        import_pyplot()  # before any work, as scikit-learn's displays do
        check_classifier(estimator, cls.__name__)
        k = check_positive_int(k, "k")
        paths = check_image_paths(X)
        y = check_targets(y, len(paths))
        true = class_indices(estimator.classes_, y, "y")
        proba = estimator.predict_proba(paths)
        rows = np.arange(len(paths))
        with np.errstate(divide="ignore"):  # a probability of 0 is loss inf
            losses = -np.log(proba[rows, true])
        order = np.argsort(-losses, kind="stable")[:k]
        pred = np.argmax(proba, axis=1)
        _, images = load_views(estimator, paths[order])
        display = cls(
            images, order, losses[order], np.asarray(y)[order],
            estimator.classes_[pred[order]], proba[order, true[order]],
            proba[order, pred[order]],
        )
        return display.plot(n_cols=n_cols, ax=ax)

    def plot(self, *, n_cols=None, ax=None):
        """Draw each image, titled with its prediction, label and loss.

        Titles read ``predicted / actual / loss / probability`` (of the
        predicted class), as fastai's; wrong predictions are in red.

        Parameters
        ----------
        n_cols : int or None, default=None
            Panels per row; None makes a near-square grid.
        ax : matplotlib Axes, array-like of Axes or None, default=None
            Where to draw: None makes a new figure; one Axes is split into
            the grid; an array-like needs an Axes per image.

        Returns
        -------
        display : TopLossesDisplay
            This display, with ``figure_`` and ``axes_`` set.
        """
        n = len(self.images)
        fig, axes = image_grid(n, n_cols, ax, type(self).__name__)
        for i, panel in enumerate(axes.flat[:n]):
            panel.imshow(self.images[i])
            wrong = self.y_pred[i] != self.y_true[i]
            panel.set_title(
                f"{self.y_pred[i]} / {self.y_true[i]}\n"
                f"{self.losses[i]:.2f} / {self.proba_pred[i]:.2f}",
                fontsize=9, color="tab:red" if wrong else "black",
            )
            panel.set_axis_off()
        if ax is None:
            fig.suptitle("predicted / actual\nloss / probability", fontsize=10)
        self.figure_, self.axes_ = fig, axes
        return self
