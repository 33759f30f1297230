"""What training and prediction need to know about the targets.

A task is built by an estimator from its fitted state (and, for training,
from the encoded training targets) and hands the shared training recipe and
the prediction path everything that differs between kinds of target, so
neither holds a branch per kind:

* the width of the head and the target tensor's dtype;
* the loss of the epoch loop (a torch criterion with its parameters), the
  per-sample loss and L2 strength of the L-BFGS probe, and the skorch net
  class;
* whether the validation split is stratified;
* how the head's outputs become predictions (softmax, sigmoid, or the
  inverse of the target scaling), also when averaged over test-time views.

:class:`SingleLabelTask` is one class per image; :class:`MultiLabelTask` an
indicator matrix of independent labels; :class:`RegressionTask` standardised
real-valued outputs.
"""

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._training import TransferNet, TransferRegressorNet

__all__ = [
    "MultiLabelTask",
    "RegressionTask",
    "SingleLabelTask",
    "SmoothedBCEWithLogitsLoss",
]


class _Task:
    """What every task has: no closed-form probe unless it says so."""

    # The ridge penalty for a closed-form probe of a linear head
    # (``fit_head_ridge``), or None to probe by L-BFGS on ``probe_loss``.
    ridge_alpha = None


class SingleLabelTask(_Task):
    """One class per image: a softmax head and the cross-entropy.

    Parameters
    ----------
    n_classes : int
    class_weight : torch.Tensor of shape (n_classes,) or None, default=None
    label_smoothing : float, default=0.0
    C : float, default=1.0
        Inverse L2 strength of the probe, as in ``LogisticRegression``.
    """

    stratify = True
    # tta_average applies the softmax to each view's logits itself.
    views_output = "logits"

    def __init__(self, n_classes, *, class_weight=None, label_smoothing=0.0, C=1.0):
        self.n_outputs = n_classes
        self.class_weight = class_weight
        self.label_smoothing = label_smoothing
        self.probe_C = C

    def target_tensor(self, targets):
        return torch.as_tensor(targets, dtype=torch.int64)

    def criterion(self):
        params = {"weight": self.class_weight}
        if self.label_smoothing:
            params["label_smoothing"] = self.label_smoothing
        return nn.CrossEntropyLoss, params

    def probe_loss(self, outputs, targets):
        weight = None if self.class_weight is None else self.class_weight.to(
            outputs.device)
        return F.cross_entropy(outputs, targets, weight=weight, reduction="none",
                               label_smoothing=self.label_smoothing)

    def net(self):
        return TransferNet, np.arange(self.n_outputs)

    def outputs(self, scores):
        return torch.softmax(scores.double(), dim=1)

    def view_outputs(self, scores):
        return scores

    def mean_of_views(self, mean):
        mean = mean.double()
        return mean / mean.sum(dim=1, keepdim=True)


class SmoothedBCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Binary cross-entropy on logits with targets smoothed towards 1/2.

    Each 0/1 target ``t`` becomes ``t * (1 - label_smoothing) +
    label_smoothing / 2``, the two-class form of the cross-entropy's label
    smoothing.
    """

    def __init__(self, *args, label_smoothing=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return super().forward(input, _smoothed(target, self.label_smoothing))


def _smoothed(targets, label_smoothing):
    if not label_smoothing:
        return targets
    return targets * (1 - label_smoothing) + label_smoothing / 2


class MultiLabelTask(_Task):
    """Independent labels: a sigmoid per label and the binary cross-entropy.

    The probe's per-sample loss sums the labels' losses, so its optimum is
    that of one ``LogisticRegression(C=C)`` per label.

    Parameters
    ----------
    n_labels : int
    pos_weight : torch.Tensor of shape (n_labels,) or None, default=None
        Weight of the positive examples of each label.
    label_smoothing : float, default=0.0
    C : float, default=1.0
    """

    stratify = False
    views_output = "proba"  # each view's sigmoid outputs, averaged

    def __init__(self, n_labels, *, pos_weight=None, label_smoothing=0.0, C=1.0):
        self.n_outputs = n_labels
        self.pos_weight = pos_weight
        self.label_smoothing = label_smoothing
        self.probe_C = C

    def target_tensor(self, targets):
        return torch.as_tensor(targets, dtype=torch.float32)

    def criterion(self):
        params = {"pos_weight": self.pos_weight}
        if self.label_smoothing:
            params["label_smoothing"] = self.label_smoothing
            return SmoothedBCEWithLogitsLoss, params
        return nn.BCEWithLogitsLoss, params

    def probe_loss(self, outputs, targets):
        pos_weight = None if self.pos_weight is None else self.pos_weight.to(
            outputs.device)
        return F.binary_cross_entropy_with_logits(
            outputs, _smoothed(targets, self.label_smoothing),
            pos_weight=pos_weight, reduction="none",
        ).sum(dim=1)

    def net(self):
        return TransferRegressorNet, None

    def outputs(self, scores):
        return torch.sigmoid(scores.double())

    def view_outputs(self, scores):
        return torch.sigmoid(scores.float())

    def mean_of_views(self, mean):
        return mean.double()


class RegressionTask(_Task):
    """Real-valued outputs, trained on targets standardised by the fit.

    Parameters
    ----------
    mean, scale : ndarray of shape (n_outputs,)
        Of the training targets; the head predicts ``(y - mean) / scale``.
    loss : {"squared_error", "huber"}, default="squared_error"
        ``"huber"``: quadratic within one standard deviation of the target,
        linear beyond it.
    alpha : float, default=1.0
        L2 strength of the probe, as in ``Ridge``: its per-sample loss is
        the squared error summed over outputs, so the probe minimises
        ``||y - Xw||² + alpha ||w||²`` on the standardised targets, which
        is ``Ridge(alpha)`` on the original ones, scaled. With the squared
        error a linear head is solved in closed form (``ridge_alpha``).
    """

    stratify = False
    views_output = "proba"  # each view's outputs as they are, averaged

    def __init__(self, mean, scale, *, loss="squared_error", alpha=1.0):
        self.mean = torch.as_tensor(np.asarray(mean), dtype=torch.float64)
        self.scale = torch.as_tensor(np.asarray(scale), dtype=torch.float64)
        self.n_outputs = len(self.mean)
        self.loss = loss
        self.probe_C = 1.0 / (2.0 * alpha) if alpha > 0 else float("inf")
        self.ridge_alpha = alpha if loss == "squared_error" else None

    def target_tensor(self, targets):
        return torch.as_tensor(targets, dtype=torch.float32)

    def criterion(self):
        if self.loss == "huber":
            return nn.HuberLoss, {"delta": 1.0}
        return nn.MSELoss, {}

    def probe_loss(self, outputs, targets):
        if self.loss == "huber":
            # sklearn's HuberRegressor's loss: r² near 0, 2|r| - 1 beyond 1.
            per_output = 2 * F.huber_loss(outputs, targets, delta=1.0,
                                          reduction="none")
        else:
            per_output = (outputs - targets) ** 2
        return per_output.sum(dim=1)

    def net(self):
        return TransferRegressorNet, None

    def outputs(self, scores):
        return scores.double() * self.scale + self.mean

    def view_outputs(self, scores):
        return scores.float()

    def mean_of_views(self, mean):
        return mean.double() * self.scale + self.mean
