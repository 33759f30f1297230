"""Fit the head to the optimum of its penalised loss on fixed embeddings.

With the frozen features cached, the head of a transfer model is a small
convex (linear head) or nearly so (MLP head) problem over a few thousand
rows: full-batch L-BFGS solves it to convergence in a fraction of a second,
where a fixed number of stochastic epochs stops wherever the epochs run out.
The objective is scikit-learn's ``LogisticRegression``'s, scaled by ``1/n``:
the (sample- and class-weighted) mean cross-entropy plus
``||W||² / (2 C n)`` over the weight matrices (biases are not penalised).
This is the "linear probe" of the LP-FT recipe (Kumar et al., ICLR 2022):
the probed head is also where fine-tuning starts.
"""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["fit_head_lbfgs"]


def _penalised_weights(head):
    return [m.weight for m in head.modules() if isinstance(m, nn.Linear)]


def fit_head_lbfgs(head, embeddings, targets, *, C=1.0, sample_weight=None,
                   class_weight=None, label_smoothing=0.0, max_iter=500,
                   tol=1e-6):
    """Train ``head`` in place by L-BFGS on ``(embeddings, targets)``.

    Parameters
    ----------
    head : torch.nn.Module
        Maps ``(n, d)`` embeddings to ``(n, n_classes)`` logits. Dropout
        layers are off during the solve (L-BFGS needs a deterministic loss).
    embeddings : torch.Tensor of shape (n, d)
    targets : torch.Tensor of shape (n,), int64
    C : float, default=1.0
        Inverse strength of the L2 penalty, as in ``LogisticRegression``.
    sample_weight : torch.Tensor of shape (n,) or None
        Weights with mean 1 (see ``normalized_sample_weight``).
    class_weight : torch.Tensor of shape (n_classes,) or None
    label_smoothing : float, default=0.0
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
    cw = None if class_weight is None else class_weight.to(device)
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
        losses_i = F.cross_entropy(
            head(x), t, weight=cw, reduction="none",
            label_smoothing=label_smoothing,
        )
        loss = (losses_i if w is None else losses_i * w).mean()
        loss = loss + sum((p * p).sum() for p in weights) / (2 * C * n)
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    head.train(was_training)
    return losses
