"""Everything that speaks skorch: the net, its callbacks and the fit loop.

The estimators describe a training run as a :class:`TrainingPlan` (plain
values and the module); this module turns it into a skorch net, trains it,
and retries with a smaller batch when the device runs out of memory. Nothing
here calls back into an estimator.
"""

import copy
import dataclasses
import math
import threading
import types
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import Callback, EarlyStopping, LRScheduler
from skorch.helper import predefined_split
from skorch.history import History
from skorch.utils import to_tensor
from torch import nn

from ._cache import module_structure_digest
from ._compat import TeeGenerator, unpack_data
from ._runtime import autocast_context, device_scope, usable_num_workers
from ._warnings import user_stacklevel

__all__ = [
    "CompiledModule",
    "NonFiniteLossError",
    "OPTIMIZERS",
    "StopOnNonFiniteLoss",
    "TrainingPlan",
    "TransferNet",
    "TransferRegressorNet",
    "ValidationEarlyStopping",
    "WarmupCosine",
    "build_net",
    "fit_with_oom_backoff",
    "optimizer_snapshot",
    "run_fit",
]

OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


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


class _StopTraining(Exception):
    """A callback ended training as planned; not the user's Ctrl-C."""


class ValidationEarlyStopping(EarlyStopping):
    """skorch's early stopping, told apart from a user's interruption.

    skorch stops the fit loop by raising ``KeyboardInterrupt``, the very
    exception Ctrl-C raises; :func:`run_fit` must report the one and not the
    other, so the planned stop is raised as an exception of its own.
    """

    def on_epoch_end(self, net, **kwargs):
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            if self.misses_ == self.patience:
                raise _StopTraining from None
            raise


class _TransferNetMixin:
    """A skorch net that trains only parameters with ``requires_grad``.

    With ``autocast_dtype`` set, forward passes run under ``torch.autocast``
    (mixed precision on CUDA); outputs are cast back to float32 for the loss.
    With float16, whose small range lets gradients underflow, the loss is
    scaled by a ``torch.amp.GradScaler`` (``grad_scaler_``); gradients are
    unscaled before ``on_grad_computed``, so callbacks such as gradient
    clipping see their true values. bfloat16 needs no scaling.

    Sample weights travel with the inputs: a batch ``X`` may be a dict
    ``{"X": inputs, "sample_weight": weights}``; the criterion must then be
    built with ``reduction="none"`` and the loss is the weighted mean (over
    every output of a sample, for losses with one value per output).

    ``lr_scales`` maps ``id(parameter)`` to a multiplier of the learning
    rate (see ``TrainableSuffix.lr_scales``); parameters with one scale form
    one optimizer group.

    With ``initial_history`` (the history of earlier fits), training
    continues it, numbering epochs on, instead of starting a new one. With
    ``initial_optimizer_state`` (an :func:`optimizer_snapshot` of an earlier
    fit of the same module), the optimizer resumes its running state, e.g.
    Adam's moment estimates, while its hyperparameters such as ``lr`` follow
    the current settings.
    """

    def __init__(self, *args, autocast_dtype=None, initial_history=None,
                 initial_optimizer_state=None, lr_scales=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.autocast_dtype = autocast_dtype
        self.initial_history = initial_history
        self.initial_optimizer_state = initial_optimizer_state
        self.lr_scales = lr_scales

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix != "optimizer" or not self.lr_scales:
            return args, kwargs
        return (_scaled_groups(args[0], self.lr_scales, kwargs["lr"]),), kwargs

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

    def torch_compile(self, module, name):
        """Compile the module for ``compile=True``; the criterion stays eager.

        The module is compiled as one graph (``fullgraph=True`` unless
        ``compile__fullgraph`` says otherwise), through a
        :class:`CompiledModule`: TorchDynamo then raises where it would
        otherwise fall back to eager without telling. The loss is left
        eager: there is nothing in it to gain from compiling.
        """
        if not self.compile or name != "module":
            return module
        params = {"fullgraph": True, **self.get_params_for("compile")}
        key = (
            module_structure_digest(module), str(self.device),
            str(self.autocast_dtype), repr(sorted(params.items())),
        )
        return CompiledModule(module, key, params)

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
            # One weight per sample, broadcast over a loss of shape (n, k).
            weight = weight.reshape(-1, *([1] * (loss.dim() - 1)))
            loss = (weight * loss).mean()
        return loss


def _call_module(module, *args, **kwargs):
    return module(*args, **kwargs)


_CALLS_BY_KEY = {}
_CALLS_LOCK = threading.Lock()


def _call_for(key):
    """A function calling its module argument, with a code object for ``key``.

    TorchDynamo caches compiled graphs on the *code object* and, past
    ``recompile_limit`` (8) entries, runs it eagerly from then on, saying
    so only in a log message. Compiled as themselves, every fit's modules
    would share their class's ``forward``: after a few architectures of a
    search, every later fit would silently train eagerly. A code object of
    its own per ``key`` (architecture, device, precision, compile options)
    gives each architecture its own budget, while fits of one architecture
    (CV folds, candidates differing in ``lr``) reuse its graphs. The process
    keeps one small function per key, as TorchDynamo keeps its graphs.
    """
    with _CALLS_LOCK:
        call = _CALLS_BY_KEY.get(key)
        if call is None:
            call = types.FunctionType(
                _call_module.__code__.replace(), _call_module.__globals__,
                _call_module.__name__,
            )
            _CALLS_BY_KEY[key] = call
    return call


class CompiledModule(nn.Module):
    """``module`` run through ``torch.compile`` of a call of its own.

    Parameters
    ----------
    module : torch.nn.Module
        What to run; a child module, so its parameters, ``train()`` and
        ``eval()`` are this module's.
    key : hashable
        Modules with one key share compiled graphs (see :func:`_call_for`).
    compile_kwargs : dict
        Arguments of ``torch.compile``.
    """

    def __init__(self, module, key, compile_kwargs):
        super().__init__()
        self.module = module
        self.compiled_call = torch.compile(_call_for(key), **compile_kwargs)

    def forward(self, *args, **kwargs):
        return self.compiled_call(self.module, *args, **kwargs)


class TransferNet(_TransferNetMixin, NeuralNetClassifier):
    """The skorch classifier of single-label targets (class indices).

    See :class:`_TransferNetMixin` for what it adds to skorch.
    """


class TransferRegressorNet(_TransferNetMixin, NeuralNetRegressor):
    """The skorch net of float target matrices: regression, multi-label.

    skorch's regressor is the plain net with float targets and the loss as
    the only score, which is what a multi-label indicator trained with a
    binary cross-entropy needs as well (its classifier's accuracy callback
    and ``predict`` assume one class per sample).
    """


def _scaled_groups(groups, scales, base_lr):
    """Split optimizer groups so that each holds parameters of one lr scale."""
    out = []
    for group in groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        by_scale = {}
        for param in group["params"]:
            by_scale.setdefault(scales.get(id(param), 1.0), []).append(param)
        for scale, params in by_scale.items():
            scaled = dict(settings, params=params)
            if scale != 1.0:
                scaled["lr"] = settings.get("lr", base_lr) * scale
            out.append(scaled)
    return out


class WarmupCosine:
    """Learning-rate factor at step ``s``: linear warmup, then cosine to 0.

    Parameters
    ----------
    n_steps : int
        Optimizer steps of the whole fit.
    warmup_fraction : float
        Fraction of them spent warming up from ``1/n_warmup`` to 1.
    """

    def __init__(self, n_steps, warmup_fraction):
        self.n_steps = max(int(n_steps), 1)
        self.n_warmup = min(math.ceil(warmup_fraction * self.n_steps), self.n_steps)

    def __call__(self, step):
        if step < self.n_warmup:
            return (step + 1) / self.n_warmup
        decay_steps = max(self.n_steps - self.n_warmup, 1)
        progress = min((step - self.n_warmup) / decay_steps, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def optimizer_snapshot(optimizer):
    """The optimizer's class and a copy of its state on the CPU, to resume it.

    Kept on the CPU so a fitted estimator holds no device memory for it;
    ``load_state_dict`` moves it back to the parameters' device.
    """
    state = optimizer.state_dict()
    return type(optimizer), {
        "state": {k: {n: (v.detach().to("cpu", copy=True)
                         if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                      for n, v in s.items()}
                  for k, s in state["state"].items()},
        "param_groups": copy.deepcopy(state["param_groups"]),
    }


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
    except _StopTraining:
        pass
    except KeyboardInterrupt:
        interrupted = True
    net.notify("on_train_end", X=X, y=y)
    return interrupted


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """One training run, as the estimator asks for it.

    Parameters
    ----------
    module : torch.nn.Module
        What trains: the whole network, or its suffix on cached features.
    criterion : type
        The loss, a torch module class.
    criterion_params : dict
        Its keyword arguments (class weights, label smoothing, ...).
    net_class : type
        :class:`TransferNet` (class indices) or :class:`TransferRegressorNet`
        (float target matrices).
    classes : ndarray or None
        The class indices, for :class:`TransferNet`.
    lr : float
        Learning rate of the head.
    lr_scales : dict
        ``id(parameter)`` to learning-rate multiplier.
    optimizer : type
        A torch optimizer class.
    max_epochs : int
    batch_size : int
    device : str
    valid : torch Dataset or None
        Held-out data for the validation loss and early stopping.
    n_iter_no_change : int or None
        Early-stopping patience on the validation loss; None trains every
        epoch.
    weighted : bool
        Inputs carry sample weights (the loss is then their weighted mean).
    num_workers : int
        Loader processes for training batches.
    autocast_dtype : torch.dtype or None
        Mixed precision of forward passes (CUDA).
    compile : bool
        ``torch.compile`` the module.
    history : skorch.History or None
        History of earlier fits, continued by this one.
    optimizer_state : tuple or None
        An :func:`optimizer_snapshot` to resume.
    net_params : dict
        Extra skorch arguments from the user; their callbacks are added to
        ours.
    verbose : int
    lr_schedule : {"constant", "cosine"}
        ``"cosine"``: linear warmup over ``warmup_fraction`` of the steps,
        then cosine decay to zero, stepped every batch.
    warmup_fraction : float
    n_train : int
        Training rows, to count the steps of the schedule.
    """

    module: nn.Module
    criterion: type
    criterion_params: dict
    net_class: type
    classes: Any
    lr: float
    lr_scales: dict
    optimizer: type
    max_epochs: int
    batch_size: int
    device: str
    valid: Any = None
    n_iter_no_change: Any = None
    weighted: bool = False
    num_workers: int = 0
    autocast_dtype: Any = None
    compile: bool = False
    history: Any = None
    optimizer_state: Any = None
    net_params: dict = dataclasses.field(default_factory=dict)
    verbose: int = 0
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    n_train: int = 0


def build_net(plan):
    """The skorch net that carries out ``plan``."""
    callbacks = [("nonfinite_loss", StopOnNonFiniteLoss())]
    if plan.n_iter_no_change is not None:
        callbacks.append((
            "early_stopping",
            ValidationEarlyStopping(patience=plan.n_iter_no_change, load_best=True),
        ))
    if plan.lr_schedule == "cosine":
        n_steps = plan.max_epochs * math.ceil(plan.n_train / plan.batch_size)
        callbacks.append((
            "lr_schedule",
            LRScheduler(
                policy=torch.optim.lr_scheduler.LambdaLR,
                lr_lambda=WarmupCosine(n_steps, plan.warmup_fraction),
                step_every="batch",
            ),
        ))
    kwargs = {f"criterion__{k}": v for k, v in plan.criterion_params.items()}
    if plan.classes is not None:
        kwargs["classes"] = plan.classes
    if plan.optimizer is torch.optim.SGD:
        kwargs["optimizer__momentum"] = 0.9
    if plan.num_workers:
        kwargs.update(
            iterator_train__num_workers=plan.num_workers,
            iterator_train__persistent_workers=True,
            iterator_valid__num_workers=plan.num_workers,
        )
    if plan.weighted:  # TransferNet takes the weighted mean itself
        kwargs["criterion__reduction"] = "none"
    kwargs.update(
        module=plan.module,
        criterion=plan.criterion,
        optimizer=plan.optimizer,
        lr=plan.lr,
        lr_scales=plan.lr_scales,
        max_epochs=plan.max_epochs,
        batch_size=plan.batch_size,
        initial_history=plan.history,
        initial_optimizer_state=plan.optimizer_state,
        train_split=None if plan.valid is None else predefined_split(plan.valid),
        iterator_train__shuffle=True,
        device=plan.device,
        verbose=plan.verbose,
        autocast_dtype=plan.autocast_dtype,
        compile=plan.compile,
    )
    user = dict(plan.net_params)
    # User callbacks are added to ours rather than replacing the guards.
    callbacks += list(user.pop("callbacks", None) or [])
    kwargs.update(user)
    for split in ("train", "valid"):
        # Loader workers the user asked for too, but not where none may
        # start; persistent workers need some (DataLoader refuses it).
        key = f"iterator_{split}__num_workers"
        kwargs[key] = usable_num_workers(kwargs.get(key, 0))
        if not kwargs[key]:
            kwargs.pop(f"iterator_{split}__persistent_workers", None)
    return plan.net_class(callbacks=callbacks, **kwargs)


def fit_with_oom_backoff(plan, train, *, seed):
    """Train the net of ``plan`` on ``train``, halving the batch on out-of-memory.

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
    module = plan.module
    start = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    while True:
        net = build_net(plan)
        # Inside the device's scope, whatever uses the current CUDA device (a
        # GradScaler, pinned batches, empty_cache) uses ``plan.device``.
        with device_scope(plan.device):
            try:
                return net, run_fit(net, train, None), plan.batch_size
            except torch.OutOfMemoryError:
                if plan.batch_size == 1:
                    raise
            del net  # drop the optimizer state and activations before retrying
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        smaller = max(1, plan.batch_size // 2)
        warnings.warn(
            f"Out of device memory while training with batch_size="
            f"{plan.batch_size}; retrying with batch_size={smaller}. Pass a "
            "smaller batch_size to skip this search.",
            ResourceWarning,
            stacklevel=user_stacklevel(),
        )
        plan = dataclasses.replace(plan, batch_size=smaller)
        module.load_state_dict(start)
        if seed is not None:
            torch.manual_seed(seed)
