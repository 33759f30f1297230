"""The training recipe: a linear probe of the head, then epochs.

:func:`train_transfer_model` takes a built :class:`~sktransfer._module.TransferModule`,
the training data in the form the fit prepared (cached frozen features, or
:class:`~sktransfer._train_inputs.TrainingImages` when the frozen part runs
each step), encoded targets, their task (:mod:`sktransfer._tasks`: the loss,
the probe's loss, whether to stratify) and the :class:`Recipe` (the
estimator's training parameters), and trains the model in place:

1. the validation split (with early stopping) and sample weights;
2. with a probed head, the L-BFGS fit of the head on the pooled embeddings
   (:func:`~sktransfer._probe.fit_head_lbfgs`; for a linear head under the
   squared error, ridge regression in closed form); with everything frozen
   and no augmentation, that is the whole fit;
3. otherwise the epoch loop, which speaks skorch (:mod:`sktransfer._training`).
"""

from dataclasses import dataclass, fields

import torch
from skorch.history import History

from ._data import tensor_dataset
from ._frozen import map_features
from ._labels import normalized_sample_weight, validation_split
from ._probe import fit_head_lbfgs, fit_head_ridge, is_linear_head
from ._runtime import autocast_context, loader_workers
from ._spill import RowView
from ._training import OPTIMIZERS, TrainingPlan, fit_with_oom_backoff

__all__ = ["Recipe", "TrainingResult", "run_in_batches", "train_transfer_model"]


@dataclass(frozen=True)
class Recipe:
    """The estimator parameters that decide how a fit trains.

    Built from the estimator with :meth:`of`, so the estimator's parameter
    names and meanings are documented in one place (its docstring). What
    depends on the kind of target (the loss and its weights, the probe's
    penalty) is the task's.
    """

    unfreeze: object
    head_solver: str
    max_epochs: int
    lr: float
    backbone_lr_ratio: float
    layer_decay: float
    lr_schedule: str
    warmup_fraction: float
    batch_size: int
    optimizer: object
    augment: object
    early_stopping: bool
    validation_fraction: float
    n_iter_no_change: int
    compile: bool
    num_workers: object
    net_params: object
    verbose: int

    @classmethod
    def of(cls, estimator, **overrides):
        """The recipe of ``estimator``'s current parameters, with overrides."""
        values = {f.name: getattr(estimator, f.name) for f in fields(cls)}
        return cls(**{**values, **overrides})

    @property
    def probes_head(self):
        """Whether the head starts from its L-BFGS fit (linear probe)."""
        if self.head_solver == "auto":
            return self.unfreeze == 0
        return self.head_solver == "lbfgs"

    def loader_workers(self, n_images):
        """DataLoader processes for ``n_images`` training images."""
        return loader_workers(self.num_workers, n_images, self.batch_size)


@dataclass
class TrainingResult:
    """What a fit produced besides the trained weights.

    ``net`` is None when the probe was the whole fit; ``batch_size`` is the
    training batch size that fit ended with (smaller after an out-of-memory
    back-off).
    """

    net: object
    interrupted: bool
    history: History
    batch_size: int


def run_in_batches(fn, inputs, *, batch_size, device, autocast_dtype):
    """``fn`` over ``inputs`` in batches, without gradients, on the CPU after.

    The trained part runs as it trained: under the same autocast (on CUDA;
    float32 elsewhere) and at the batch size fit ended with. Inputs stored
    in half precision become float32 one batch at a time, after the move
    (half the bytes cross to the device).
    """
    outputs = []
    with torch.inference_mode(), autocast_context(device, autocast_dtype):
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start : start + batch_size].to(device).float()
            outputs.append(fn(batch).float().cpu())
    return torch.cat(outputs)


def _probe_embeddings(model, frozen_pass, images, features, idx, run):
    """Pooled embeddings of training rows ``idx``, through the unfrozen
    blocks as they are now (pretrained), for the L-BFGS head fit."""
    model.eval()
    trainable = model.suffix.trainable
    if features is not None:
        embeddings = run(trainable, RowView(features, idx))
    else:
        embeddings = map_features(
            frozen_pass, images.paths[idx], lambda rows: run(trainable, rows)
        )
    return embeddings.clone()  # a normal tensor, usable by autograd


def train_transfer_model(model, recipe, task, *, images, features, frozen_pass,
                         targets, sample_weight, device, autocast_dtype,
                         split_seed, seed, probe, history=None,
                         optimizer_state=None):
    """Train ``model`` (a TransferModule) in place by ``recipe``.

    Parameters
    ----------
    model : TransferModule
        Built and placed on ``device``.
    recipe : Recipe
        The training parameters.
    task : SingleLabelTask, MultiLabelTask or RegressionTask
        The loss, its weights and the probe's penalty for these targets.
    images : TrainingImages
        The usable training images (read when ``features`` is None).
    features : torch.Tensor or None
        Cached frozen features of ``images``, one row each.
    frozen_pass : FrozenPass
        How the frozen prefix runs over files (for the probe without cache).
    targets : ndarray
        Encoded targets, one row per image: class indices, an indicator
        matrix, or standardised values.
    sample_weight : ndarray or None
        Per-image weights.
    device : str
        Where training runs.
    autocast_dtype : torch.dtype or None
        Mixed precision of the trained part.
    split_seed : int or None
        Seed of the validation split (the same across continued fits).
    seed : int or None
        Seed of the epoch loop's shuffling.
    probe : bool
        Fit the head by L-BFGS first.
    history : skorch History or None, default=None
        Continued by the epoch loop (warm start).
    optimizer_state : dict or None, default=None
        Optimizer state to continue from.

    Returns
    -------
    result : TrainingResult
    """
    train_idx, valid_idx = validation_split(
        targets,
        recipe.validation_fraction if recipe.early_stopping else None,
        split_seed,
        stratify=task.stratify,
    )
    targets = task.target_tensor(targets)
    weights = normalized_sample_weight(sample_weight, train_idx)

    def run(fn, rows):
        return run_in_batches(fn, rows, batch_size=recipe.batch_size,
                              device=device, autocast_dtype=autocast_dtype)

    clean = features if features is not None else images.centre
    if probe:
        embeddings = _probe_embeddings(
            model, frozen_pass, images, clean, train_idx, run
        )
        head = model.suffix.head
        probe_weights = None if weights is None else weights[train_idx]
        closed_form = task.ridge_alpha is not None and is_linear_head(head)
        if closed_form:  # one large matrix product, where threads help
            losses = fit_head_ridge(
                head, embeddings, targets[train_idx], alpha=task.ridge_alpha,
                sample_weight=probe_weights,
            )
        else:
            losses = fit_head_lbfgs(
                head, embeddings, targets[train_idx], loss=task.probe_loss,
                C=task.probe_C, sample_weight=probe_weights,
            )
        if recipe.unfreeze == 0 and not recipe.augment:
            # The probed head is the fitted model: nothing left to train.
            record = {"epoch": 1, "train_loss": losses[-1]}
            if not closed_form:
                record["lbfgs_iterations"] = len(losses)
            return TrainingResult(None, False, History([record]), recipe.batch_size)
    if images.views is not None:  # precomputed random views of the prefix
        module, num_workers = model.suffix, 0
        train, valid = images.datasets(train_idx, valid_idx, targets, weights)
    elif features is not None:
        module, num_workers = model.suffix, 0
        train = tensor_dataset(features, targets, weights, train_idx)
        valid = (
            None if valid_idx is None
            else tensor_dataset(features, targets, weights, valid_idx)
        )
    else:
        module = model
        num_workers = recipe.loader_workers(len(train_idx))
        train, valid = images.datasets(train_idx, valid_idx, targets, weights)
    criterion, criterion_params = task.criterion()
    net_class, classes = task.net()
    plan = TrainingPlan(
        module=module,
        criterion=criterion,
        criterion_params=criterion_params,
        net_class=net_class,
        classes=classes,
        lr=recipe.lr,
        lr_scales=model.suffix.lr_scales(recipe.backbone_lr_ratio, recipe.layer_decay),
        optimizer=OPTIMIZERS.get(recipe.optimizer, recipe.optimizer),
        max_epochs=recipe.max_epochs,
        batch_size=recipe.batch_size,
        device=device,
        valid=valid,
        n_iter_no_change=recipe.n_iter_no_change if recipe.early_stopping else None,
        weighted=weights is not None,
        num_workers=num_workers,
        autocast_dtype=autocast_dtype,
        compile=recipe.compile,
        history=history,
        optimizer_state=optimizer_state,
        net_params=dict(recipe.net_params or {}),
        verbose=recipe.verbose,
        lr_schedule=recipe.lr_schedule,
        warmup_fraction=recipe.warmup_fraction,
        n_train=len(train_idx),
    )
    net, interrupted, batch_size = fit_with_oom_backoff(plan, train, seed=seed)
    return TrainingResult(net, interrupted, net.history, batch_size)
