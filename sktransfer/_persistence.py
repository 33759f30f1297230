"""Pickle support: CPU-only tensors, version stamps, and loading anywhere.

A fitted estimator is pickled as its parameters, its fitted attributes and
the ``state_dict`` of its torch module with every tensor on the CPU. Loading
rebuilds the architecture (never downloading weights) and loads that state,
so a model fitted on a GPU loads on a CPU-only machine.
"""

import warnings
from importlib.metadata import PackageNotFoundError, version

import torch

__all__ = ["InconsistentVersionWarning", "VersionStampMixin", "library_versions"]

_TRACKED = ("sktransfer", "scikit-learn", "torch", "torchvision", "skorch")


class InconsistentVersionWarning(UserWarning):
    """A model is loaded under library versions other than it was saved with."""


def library_versions():
    """Installed versions of the libraries a saved model depends on."""
    from ._version import __version__

    found = {"sktransfer": __version__}
    for name in _TRACKED[1:]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def warn_on_version_change(saved, what="This model"):
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
            stacklevel=3,
        )


class _ModuleState:
    """A torch module's state dict, on the CPU, standing in for it in a pickle."""

    def __init__(self, module):
        self.state_dict = {k: v.detach().cpu() for k, v in module.state_dict().items()}


class VersionStampMixin:
    """Pickle torch modules as CPU state dicts and stamp library versions.

    Subclasses implement ``_rebuild_module(attr)`` returning a freshly built,
    untrained module of the right architecture for fitted attribute ``attr``.
    """

    _module_attributes = ("model_",)

    def __getstate__(self):
        state = dict(super().__getstate__())
        for attr in self._module_attributes:
            if state.get(attr) is not None:
                state[attr] = _ModuleState(state[attr])
        state["_library_versions"] = library_versions()
        return state

    def __setstate__(self, state):
        saved_versions = state.pop("_library_versions", None)
        if saved_versions is not None:
            warn_on_version_change(saved_versions, f"This {type(self).__name__}")
        modules = {
            attr: state.pop(attr)
            for attr in self._module_attributes
            if isinstance(state.get(attr), _ModuleState)
        }
        super().__setstate__(state)
        if modules:
            self._restore_device()
        for attr, saved in modules.items():
            module = self._rebuild_module(attr)
            module.load_state_dict(saved.state_dict)
            # Same memory format as fit: convolutions in another layout round
            # differently, and a loaded model must predict exactly as saved.
            module = module.to(self.device_, memory_format=torch.channels_last)
            setattr(self, attr, module.eval())

    def _restore_device(self):
        device = getattr(self, "device_", "cpu")
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            warnings.warn(
                f"This model was fitted on {device!r} but no CUDA device is "
                "available; loading it on the CPU.",
                UserWarning,
                stacklevel=3,
            )
            self.device_ = "cpu"
            self._setup_precision()
