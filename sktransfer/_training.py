"""skorch glue: the net subclass, a NaN guard, and an interruptible fit loop."""

import contextlib
import copy
import multiprocessing
import os
import warnings
from collections.abc import Mapping

import torch
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback
from skorch.dataset import unpack_data
from skorch.history import History
from skorch.utils import TeeGenerator, to_tensor

from ._features import autocast_context
from ._warnings import user_stacklevel

__all__ = [
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "TransferNet",
    "fit_with_oom_backoff",
    "limit_threads_in_worker",
    "optimizer_snapshot",
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
    With float16, whose small range lets gradients underflow, the loss is
    scaled by a ``torch.amp.GradScaler`` (``grad_scaler_``); gradients are
    unscaled before ``on_grad_computed``, so callbacks such as gradient
    clipping see their true values. bfloat16 needs no scaling.

    Sample weights travel with the inputs: a batch ``X`` may be a dict
    ``{"X": inputs, "sample_weight": weights}``; the criterion must then be
    built with ``reduction="none"`` and the loss is the weighted mean.

    With ``initial_history`` (the history of earlier fits), training
    continues it, numbering epochs on, instead of starting a new one. With
    ``initial_optimizer_state`` (an :func:`optimizer_snapshot` of an earlier
    fit of the same module), the optimizer resumes its running state, e.g.
    Adam's moment estimates, while its hyperparameters such as ``lr`` follow
    the current settings.
    """

    def __init__(self, *args, autocast_dtype=None, initial_history=None,
                 initial_optimizer_state=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.autocast_dtype = autocast_dtype
        self.initial_history = initial_history
        self.initial_optimizer_state = initial_optimizer_state

    def initialize(self):
        super().initialize()
        self.grad_scaler_ = (
            torch.amp.GradScaler(torch.device(self.device).type)
            if self.autocast_dtype == torch.float16 else None
        )
        return self

    def initialize_optimizer(self, *args, **kwargs):
        super().initialize_optimizer(*args, **kwargs)
        if self.initial_optimizer_state is not None:
            _resume_optimizer(self.optimizer_, self.initial_optimizer_state)
        return self

    def initialize_history(self):
        super().initialize_history()
        if self.initial_history is not None:
            self.history_ = History(self.initial_history)
        return self

    def get_all_learnable_params(self):
        for name, param in super().get_all_learnable_params():
            if param.requires_grad:
                yield name, param

    def infer(self, x, **fit_params):
        if isinstance(x, Mapping):  # the weights are for the loss, not forward
            x = x["X"]
        with autocast_context(self.device, self.autocast_dtype):
            return super().infer(x, **fit_params).float()

    def train_step_single(self, batch, **fit_params):
        if self.grad_scaler_ is None:
            return super().train_step_single(batch, **fit_params)
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        self.grad_scaler_.scale(loss).backward()
        return {"loss": loss, "y_pred": y_pred}

    def train_step(self, batch, **fit_params):
        if self.grad_scaler_ is None:
            return super().train_step(batch, **fit_params)
        # skorch's step passes a closure to optimizer.step(), which a
        # GradScaler cannot wrap: the scaled step is spelled out instead.
        self.optimizer_.zero_grad()
        step = self.train_step_single(batch, **fit_params)
        self.grad_scaler_.unscale_(self.optimizer_)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.get_all_learnable_params()),
            batch=batch,
            training=True,
        )
        self.grad_scaler_.step(self.optimizer_)  # skipped on inf/NaN gradients
        self.grad_scaler_.update()
        return step

    def get_loss(self, y_pred, y_true, X=None, training=False):
        loss = super().get_loss(y_pred, y_true, X=X, training=training)
        if isinstance(X, Mapping) and "sample_weight" in X:
            weight = to_tensor(X["sample_weight"], device=self.device)
            loss = (weight * loss).mean()
        return loss


def optimizer_snapshot(optimizer):
    """The optimizer's class and a copy of its state, to resume it later."""
    return type(optimizer), copy.deepcopy(optimizer.state_dict())


def _resume_optimizer(optimizer, snapshot):
    """Load ``snapshot`` into ``optimizer`` if it fits; keep current settings.

    A snapshot of another optimizer class or of other parameter groups is
    ignored: the optimizer then starts afresh, as in a first fit.
    """
    optimizer_class, state = snapshot
    groups = optimizer.param_groups
    if type(optimizer) is not optimizer_class or [
        len(g["params"]) for g in state["param_groups"]
    ] != [len(g["params"]) for g in groups]:
        return
    settings = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    # A copy: the optimizer updates its state in place, and the snapshot may
    # be loaded again (a retry after running out of memory).
    optimizer.load_state_dict(copy.deepcopy(state))
    for group, current in zip(optimizer.param_groups, settings):
        group.update(current)


def run_fit(net, X, y=None):
    """Initialise and train ``net``; return True if interrupted by Ctrl-C.

    skorch's own ``partial_fit`` swallows ``KeyboardInterrupt``, so a search
    would carry on with the next fold. Here it is reported to the caller,
    which keeps the weights so far and then re-raises.
    """
    net.initialize()
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


def fit_with_oom_backoff(make_net, module, X, y, *, batch_size, seed):
    """Train ``make_net(batch_size)``, halving the batch on out-of-memory.

    The module's weights are restored and torch re-seeded before each retry,
    so a fit that ran out of memory at 32 and trained at 16 gives the same
    model as a fit asked for 16 directly.

    Returns
    -------
    net : skorch net
        The net that trained.
    interrupted : bool
        Whether Ctrl-C stopped training.
    batch_size : int
        The batch size that fitted in memory.
    """
    start = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    requested = batch_size
    while True:
        net = make_net(batch_size)
        try:
            return net, run_fit(net, X, y), batch_size
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
        del net  # drop the optimizer state and activations before retrying
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        batch_size = max(1, batch_size // 2)
        warnings.warn(
            f"Out of device memory while training with batch_size="
            f"{requested}; retrying with batch_size={batch_size}. Pass a smaller "
            "batch_size to skip this search.",
            ResourceWarning,
            stacklevel=user_stacklevel(),
        )
        module.load_state_dict(start)
        if seed is not None:
            torch.manual_seed(seed)


def _worker_thread_limit():
    """Threads this process may use when it is a parallel worker, else None.

    joblib's process backends (loky, multiprocessing) start workers with
    ``OMP_NUM_THREADS`` set to ``cpu_count // n_jobs``; torch may still have
    been given more threads (imported earlier, or set by other code), and
    n_jobs workers each using every core would oversubscribe the CPU.
    """
    if multiprocessing.parent_process() is None:
        return None
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return None


def limit_threads_in_worker():
    """Cap torch's intra-op threads when this process is a joblib worker.

    The cap stays for the worker's life: the process belongs to the parallel
    job, and every later task there shares the CPU the same way.

    Returns
    -------
    n_threads : int or None
        The cap applied, or None outside a worker.
    """
    limit = _worker_thread_limit()
    if limit is not None and torch.get_num_threads() > limit:
        torch.set_num_threads(limit)
    return limit
