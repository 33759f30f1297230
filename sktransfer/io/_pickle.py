"""Pickle support: CPU-only tensors, version stamps, and loading anywhere.

A fitted estimator is pickled as its parameters and its fitted state, as the
estimator's own ``_fitted_state`` returns it: plain values and the
``state_dict`` of each torch module with every tensor on the CPU. Loading
rebuilds the architecture (never downloading weights) and loads that state,
so a model fitted on a GPU loads on a CPU-only machine.
"""

import warnings
from importlib.metadata import PackageNotFoundError, version

import torch

from .._warnings import user_stacklevel

__all__ = [
    "InconsistentVersionWarning",
    "PickleSupportMixin",
    "library_versions",
    "on_cpu",
    "warn_on_version_change",
]

_TRACKED = ("sktransfer", "scikit-learn", "torch", "torchvision", "skorch")


class InconsistentVersionWarning(UserWarning):
    """A model is loaded under library versions other than it was saved with."""


def library_versions():
    """Installed versions of the libraries a saved model depends on."""
    from .._version import __version__

    found = {"sktransfer": __version__}
    for name in _TRACKED[1:]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def warn_on_version_change(saved, what="This model"):
    """Warn with :class:`InconsistentVersionWarning` if ``saved`` differs."""
    current = library_versions()
    changed = {
        name: (saved.get(name), current.get(name))
        for name in _TRACKED
        if name in saved and saved.get(name) != current.get(name)
    }
    if changed:
        detail = ", ".join(f"{n} {old} -> {new}" for n, (old, new) in changed.items())
        warnings.warn(
            f"{what} was saved with other library versions ({detail}). It may "
            "load and predict differently; refit it under the current versions "
            "if results matter.",
            InconsistentVersionWarning,
            stacklevel=user_stacklevel(),
        )


def on_cpu(value):
    """``value`` with every tensor in it (through dicts, lists, tuples) on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if type(value) is dict:
        return {k: on_cpu(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(on_cpu(v) for v in value)
    return value


class PickleSupportMixin:
    """Pickle the fitted state through the estimator's state methods.

    The estimator provides ``_fitted_state()``, returning ``(values,
    modules)``, and ``_restore_fitted_state(values, modules)``; the pickle
    holds the parameters, those two dicts and the library versions.
    """

    def __getstate__(self):
        state = dict(super().__getstate__())
        values, modules = self._fitted_state()
        for name in (*values, *modules):
            state.pop(name, None)
        # A GPU tensor anywhere would make the pickle unloadable on a
        # CPU-only machine, so none may hide in other attributes either.
        state = {k: on_cpu(v) for k, v in state.items()}
        if values or modules:  # fitted
            state["_fitted_values"] = on_cpu(values)
            state["_fitted_modules"] = modules
        state["_library_versions"] = library_versions()
        return state

    def __setstate__(self, state):
        saved_versions = state.pop("_library_versions", None)
        if saved_versions is not None:
            warn_on_version_change(saved_versions, f"This {type(self).__name__}")
        values = state.pop("_fitted_values", None)
        modules = state.pop("_fitted_modules", None)
        super().__setstate__(state)
        if values is not None:
            self._restore_fitted_state(values, modules or {})
