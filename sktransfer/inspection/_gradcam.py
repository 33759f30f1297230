"""Where in each image the evidence for a class lies: class-activation maps."""

from numbers import Real

import numpy as np

from .._data import check_image_paths
from .._plotting import import_pyplot
from ._cam import METHODS, class_activation_maps, model_blocks, resolve_layer
from ._views import (
    check_classifier,
    check_positive_int,
    class_indices,
    image_grid,
    load_views,
)

__all__ = ["GradCAMDisplay"]


class GradCAMDisplay:
    """Class-activation maps (HiResCAM or Grad-CAM) over images.

    Each map shows where, in the image as the network sees it (resized and
    centre-cropped), the activations of one backbone block raised the score
    of a class. It is best created with :meth:`from_estimator`; the
    constructor takes maps already computed.

    Needs matplotlib for :meth:`plot` (``pip install "sktransfer[plot]"``).

    Parameters
    ----------
    heatmaps : ndarray of shape (n_images, S, S)
        Maps in [0, 1], at the size of the images.
    images : ndarray of shape (n_images, S, S, 3), dtype=uint8
        The images the maps explain.
    target_labels : ndarray of shape (n_images,)
        The class each map explains.
    predicted_labels : ndarray of shape (n_images,) or None, default=None
        The model's prediction for each image, shown in the titles.
    target_proba : ndarray of shape (n_images,) or None, default=None
        The model's probability of each image's target class.

    Attributes
    ----------
    figure_ : matplotlib Figure
        Figure holding the panels, set by :meth:`plot`.
    axes_ : ndarray of matplotlib Axes
        One Axes per panel (those beyond the last image are turned off),
        set by :meth:`plot`.

    See Also
    --------
    TopLossesDisplay : The images the model gets most wrong.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from sktransfer import PretrainedCNNClassifier
    >>> from sktransfer.datasets import load_emoji
    >>> from sktransfer.inspection import GradCAMDisplay
    >>> X, y = load_emoji()
    >>> clf = PretrainedCNNClassifier("resnet18", weights=None, image_size=64,
    ...                               max_epochs=1, random_state=0).fit(X, y)
    >>> display = GradCAMDisplay.from_estimator(clf, X[:4])
    >>> display.heatmaps.shape
    (4, 64, 64)
    """

    def __init__(self, heatmaps, images, target_labels, *, predicted_labels=None,
                 target_proba=None):
        self.heatmaps = heatmaps
        self.images = images
        self.target_labels = target_labels
        self.predicted_labels = predicted_labels
        self.target_proba = target_proba

    @classmethod
    def from_estimator(cls, estimator, X, *, target=None, layer=None,
                       method="hirescam", batch_size=None, n_cols=None,
                       alpha=0.5, cmap="jet", ax=None):
        """Compute the maps of a fitted classifier on images and plot them.

        The backbone's blocks run one after the other, with gradients
        enabled from the chosen block on (frozen blocks included, although
        predict runs them without). Test-time augmentation (``tta``) is not
        applied: the maps and the titles' predictions are of the evaluation
        view alone.

        Parameters
        ----------
        estimator : PretrainedCNNClassifier
            A fitted classifier (also one loaded with ``load`` or joblib).
        X : array-like of shape (n_images,)
            Image file paths.
        target : label, array-like of shape (n_images,) or None, default=None
            Class whose evidence is shown: None for each image's predicted
            class, one label of ``classes_`` for every image, or one label
            per image (e.g. the true labels).
        layer : int or None, default=None
            Block of the backbone whose activations are weighted, by index
            (0 is the stem, -1 the last block). None is the last block: the
            last trainable one when ``unfreeze > 0``, else the last frozen
            one; for a timm vision transformer it is the block before the
            last (the last one's patch tokens get no gradient when only the
            class token is pooled). Later blocks see more of the image but
            at a coarser grid (1/32 of the input for most CNNs). Blocks may
            output feature maps ``(N, C, H, W)`` (``(N, H, W, C)`` for Swin)
            or ViT tokens ``(N, T, C)`` (class and register tokens first,
            then a square grid of patches).
        method : {"hirescam", "gradcam"}, default="hirescam"
            ``"hirescam"`` multiplies activations and gradients position by
            position; ``"gradcam"`` weights each channel by its gradient
            averaged over positions. Both agree on the last block; on
            earlier ones HiResCAM shows only locations the score depends on.
        batch_size : int or None, default=None
            Images per forward and backward pass; None uses the estimator's
            ``batch_size``.
        n_cols : int or None, default=None
            Panels per row; None makes a near-square grid.
        alpha : float, default=0.5
            Opacity of the map over the image, from 0 to 1.
        cmap : str or matplotlib Colormap, default="jet"
            Colour map of the maps.
        ax : matplotlib Axes, array-like of Axes or None, default=None
            Where to draw: None makes a new figure; one Axes is split into
            the grid; an array-like needs an Axes per image.

        Returns
        -------
        display : GradCAMDisplay
            The maps in ``heatmaps``, drawn on ``figure_``.
        """
        import_pyplot()  # before any work, as scikit-learn's displays do
        check_classifier(estimator, cls.__name__)
        if method not in METHODS:
            raise ValueError(
                f"method must be one of {list(METHODS)}; got {method!r}."
            )
        _check_alpha(alpha)
        batch_size = check_positive_int(batch_size, "batch_size", allow_none=True)
        paths = check_image_paths(X)
        # Arguments are checked before any image is read.
        resolve_layer(layer, model_blocks(estimator)[0])
        classes = estimator.classes_
        n = len(paths)
        if target is None:
            targets = None
        elif np.ndim(target) == 0:
            targets = np.full(n, class_indices(classes, [target], "target")[0])
        else:
            targets = class_indices(classes, np.asarray(target).ravel(), "target")
            if len(targets) != n:
                raise ValueError(
                    f"target has {len(targets)} labels for {n} images; give one "
                    "label per image, a single label, or None (the predicted "
                    "class)."
                )
        batch_size = batch_size or estimator.batch_size
        inputs, images = load_views(estimator, paths)
        heatmaps, proba = class_activation_maps(
            estimator, inputs, targets, layer=layer, method=method,
            batch_size=batch_size,
        )
        predicted = np.argmax(proba, axis=1)
        if targets is None:
            targets = predicted
        display = cls(
            heatmaps, images, classes[targets],
            predicted_labels=classes[predicted],
            target_proba=proba[np.arange(n), targets],
        )
        return display.plot(n_cols=n_cols, alpha=alpha, cmap=cmap, ax=ax)

    def plot(self, *, n_cols=None, alpha=0.5, cmap="jet", ax=None):
        """Draw each image with its map over it.

        Parameters
        ----------
        n_cols : int or None, default=None
            Panels per row; None makes a near-square grid.
        alpha : float, default=0.5
            Opacity of the map over the image, from 0 to 1.
        cmap : str or matplotlib Colormap, default="jet"
            Colour map of the maps.
        ax : matplotlib Axes, array-like of Axes or None, default=None
            Where to draw: None makes a new figure; one Axes is split into
            the grid; an array-like needs an Axes per image.

        Returns
        -------
        display : GradCAMDisplay
            This display, with ``figure_`` and ``axes_`` set.
        """
        _check_alpha(alpha)
        n = len(self.heatmaps)
        fig, axes = image_grid(n, n_cols, ax, type(self).__name__)
        for i, panel in enumerate(axes.flat[:n]):
            panel.imshow(self.images[i])
            panel.imshow(self.heatmaps[i], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
            panel.set_title(self._title(i), fontsize=9)
            panel.set_axis_off()
        self.figure_, self.axes_ = fig, axes
        return self

    def _title(self, i):
        target = self.target_labels[i]
        proba = "" if self.target_proba is None else f" ({self.target_proba[i]:.2f})"
        if self.predicted_labels is None:
            return f"{target}{proba}"
        predicted = self.predicted_labels[i]
        if predicted == target:
            return f"{target}{proba}"
        return f"map: {target}{proba}\npred: {predicted}"


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a float from 0 to 1; got {alpha!r}.")
