"""Look inside a fitted classifier: where it looks, and what it gets wrong.

Displays in the manner of scikit-learn's (``ConfusionMatrixDisplay``): build
one with ``from_estimator``, find the figure in ``figure_`` and the computed
values in plain attributes. Plotting needs matplotlib
(``pip install "sktransfer[plot]"``); it is imported only when a display is
drawn.

- :class:`GradCAMDisplay`: class-activation maps (HiResCAM or Grad-CAM) of
  one backbone block over each image.
- :class:`TopLossesDisplay`: the images of highest cross-entropy loss, as
  fastai's ``plot_top_losses``.
"""

from ._gradcam import GradCAMDisplay
from ._top_losses import TopLossesDisplay

__all__ = ["GradCAMDisplay", "TopLossesDisplay"]
