"""Fit the head to the optimum of its penalised loss on fixed embeddings.

With the frozen features cached, the head of a transfer model is a small
convex (linear head) or nearly so (MLP head) problem over a few thousand
rows: full-batch L-BFGS solves it to convergence in a fraction of a second,
where a fixed number of stochastic epochs stops wherever the epochs run out.
The objective is scikit-learn's ``LogisticRegression``'s, scaled by ``1/n``:
the (sample- and class-weighted) mean per-sample loss plus
``||W||² / (2 C n)`` over the weight matrices (biases are not penalised).
The loss is the cross-entropy by default; the targets' task passes its own
(a binary cross-entropy summed over labels: one logistic regression per
label; a squared error summed over outputs: ``Ridge`` with
``alpha = 1 / (2 C)``). This is the "linear probe" of the LP-FT recipe
(Kumar et al., ICLR 2022): the probed head is also where fine-tuning starts.

A linear head under the squared error has a closed form, ridge regression,
which :func:`fit_head_ridge` solves exactly: L-BFGS converges slowly on the
ill-conditioned least-squares problems of small penalties.
"""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["fit_head_lbfgs", "fit_head_ridge", "is_linear_head"]


def _penalised_weights(head):
    return [m.weight for m in head.modules() if isinstance(m, nn.Linear)]


def is_linear_head(head):
    """Whether ``head`` is one linear layer (after dropout, if any)."""
    layers = [m for m in head.modules() if m is not head]
    return (sum(isinstance(m, nn.Linear) for m in layers) == 1
            and all(isinstance(m, (nn.Linear, nn.Dropout)) for m in layers))


def fit_head_ridge(head, embeddings, targets, *, alpha=1.0, sample_weight=None):
    """Set the linear ``head`` to the ridge regression of ``targets``.

    The optimum of ``sum_i w_i ||y_i - W x_i - b||² + alpha ||W||²`` (the
    bias unpenalised), as ``sklearn.linear_model.Ridge`` with
    ``sample_weight``: centre by the weighted means, then, in float64, solve
    the normal equations ``(AᵀA + alpha I) W = AᵀB`` with ``A = sqrt(w) Xc``
    and ``B = sqrt(w) Yc``, or their dual ``W = Aᵀ (AAᵀ + alpha I)⁻¹ B``
    when there are fewer images than features. ``alpha=0`` is ordinary
    least squares (minimum-norm where the embeddings are rank-deficient).

    Parameters
    ----------
    head : torch.nn.Module
        One ``nn.Linear`` (see :func:`is_linear_head`).
    embeddings : torch.Tensor of shape (n, d)
    targets : torch.Tensor of shape (n, k)
    alpha : float, default=1.0
    sample_weight : torch.Tensor of shape (n,) or None

    Returns
    -------
    losses : list of float
        The objective, scaled by ``1/n``, at the solution.
    """
    linear = next(m for m in head.modules() if isinstance(m, nn.Linear))
    x = embeddings.detach().cpu().double()
    y = targets.detach().cpu().double()
    n, d = x.shape
    w = (torch.ones(n, dtype=torch.float64) if sample_weight is None
         else sample_weight.detach().cpu().double())
    x_mean = (w[:, None] * x).sum(0) / w.sum()
    y_mean = (w[:, None] * y).sum(0) / w.sum()
    root = w.sqrt()[:, None]
    a, b = root * (x - x_mean), root * (y - y_mean)
    if alpha == 0:
        coef = torch.linalg.lstsq(a, b, driver="gelsd").solution
    elif n >= d:
        gram = a.T @ a + alpha * torch.eye(d, dtype=a.dtype)
        coef = torch.linalg.solve(gram, a.T @ b)
    else:
        kernel = a @ a.T + alpha * torch.eye(n, dtype=a.dtype)
        coef = a.T @ torch.linalg.solve(kernel, b)
    intercept = y_mean - x_mean @ coef
    with torch.no_grad():
        linear.weight.copy_(coef.T)
        linear.bias.copy_(intercept)
    residual = x @ coef + intercept - y
    objective = (w * (residual**2).sum(1)).sum() + alpha * (coef**2).sum()
    return [float(objective / n)]


def fit_head_lbfgs(head, embeddings, targets, *, loss=None, C=1.0,
                   sample_weight=None, class_weight=None, label_smoothing=0.0,
                   max_iter=500, tol=1e-6):
    """Train ``head`` in place by L-BFGS on ``(embeddings, targets)``.

    Parameters
    ----------
    head : torch.nn.Module
        Maps ``(n, d)`` embeddings to ``(n, n_classes)`` logits. Dropout
        layers are off during the solve (L-BFGS needs a deterministic loss).
    embeddings : torch.Tensor of shape (n, d)
    targets : torch.Tensor
        What ``loss`` compares the head's outputs with: by default class
        indices of shape (n,), int64.
    loss : callable or None, default=None
        ``loss(outputs, targets)`` returns the loss of each sample, shape
        (n,). ``None`` is the cross-entropy, with ``class_weight`` and
        ``label_smoothing``.
    C : float, default=1.0
        Inverse strength of the L2 penalty, as in ``LogisticRegression``.
    sample_weight : torch.Tensor of shape (n,) or None
        Weights with mean 1 (see ``normalized_sample_weight``).
    class_weight : torch.Tensor of shape (n_classes,) or None
        Of the default cross-entropy loss.
    label_smoothing : float, default=0.0
        Of the default cross-entropy loss.
    max_iter : int, default=500
        Most L-BFGS iterations.
    tol : float, default=1e-6
        Stop when the gradient's largest entry falls below this.

    Returns
    -------
    losses : list of float
        The objective after each iteration.
    """
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    x = embeddings.to(device, torch.float32)
    t = targets.to(device)
    w = None if sample_weight is None else sample_weight.to(device)
    if loss is None:
        cw = None if class_weight is None else class_weight.to(device)

        def loss(outputs, targets):
            return F.cross_entropy(outputs, targets, weight=cw, reduction="none",
                                   label_smoothing=label_smoothing)

    n = len(x)
    params = [p for p in head.parameters() if p.requires_grad]
    weights = _penalised_weights(head)
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, tolerance_grad=tol,
        tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe",
    )
    losses = []

    def objective():
        optimizer.zero_grad()
        losses_i = loss(head(x), t)
        value = (losses_i if w is None else losses_i * w).mean()
        value = value + sum((p * p).sum() for p in weights) / (2 * C * n)
        value.backward()
        losses.append(float(value.detach()))
        return value

    with torch.enable_grad():
        optimizer.step(objective)
    head.train(was_training)
    return losses
