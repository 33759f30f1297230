"""skorch glue: the net subclass, a NaN guard, and an interruptible fit loop."""

import contextlib
from collections.abc import Mapping

import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from skorch.history import History
from skorch.utils import to_tensor

from ._features import autocast_context

__all__ = [
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "TransferNet",
    "run_fit",
    "seeded",
]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(Callback):
    """Stop at the first NaN or infinite training loss, saying where."""

    def on_epoch_begin(self, net, **kwargs):
        self.batch_index_ = 0

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if not training:
            return
        self.batch_index_ += 1
        if loss is not None and not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"The training loss became {loss.item()} in epoch "
                f"{len(net.history)}, batch {self.batch_index_}. Lower `lr`, use "
                "precision='fp32', or check the images and labels for outliers."
            )


class TransferNet(NeuralNetClassifier):
    """skorch classifier that trains only parameters with ``requires_grad``.

    With ``autocast_dtype`` set, forward passes run under ``torch.autocast``
    (mixed precision on CUDA); outputs are cast back to float32 for the loss.

    Sample weights travel with the inputs: a batch ``X`` may be a dict
    ``{"X": inputs, "sample_weight": weights}``; the criterion must then be
    built with ``reduction="none"`` and the loss is the weighted mean.
    """

    def __init__(self, *args, autocast_dtype=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.autocast_dtype = autocast_dtype

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    def infer(self, x, **fit_params):
        if isinstance(x, Mapping):  # the weights are for the loss, not forward
            x = x["X"]
        with autocast_context(self.device, self.autocast_dtype):
            return super().infer(x, **fit_params).float()

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if isinstance(X, Mapping) and "sample_weight" in X:
            weight = to_tensor(X["sample_weight"], device=self.device)
            loss = (weight * loss).mean()
        return loss


def run_fit(net, X, y=None, history=None):
    """Initialise and train ``net``; return True if interrupted by Ctrl-C.

    skorch's own ``partial_fit`` swallows ``KeyboardInterrupt``, so a search
    would carry on with the next fold. Here it is reported to the caller,
    which keeps the weights so far and then re-raises. A ``history`` from
    earlier fits is continued (epochs numbered on), not restarted.
    """
    net.initialize()
    if history is not None:
        net.history_ = History(history)
    net.notify("on_train_begin", X=X, y=y)
    interrupted = False
    try:
        net.fit_loop(X, y)
    except KeyboardInterrupt:
        interrupted = True
    net.notify("on_train_end", X=X, y=y)
    return interrupted


@contextlib.contextmanager
def seeded(seed, device):
    """Seed torch inside the block without touching the caller's RNG state."""
    if seed is None:
        yield
        return
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
