"""Persistence: pickle support and the pickle-free safe format.

Both are built on one pair of estimator methods, ``_fitted_state`` and
``_restore_fitted_state``, so the list of fitted attributes lives in the
estimator classes alone.
"""

from ._export import export_inputs, export_model
from ._pickle import InconsistentVersionWarning, PickleSupportMixin, library_versions
from ._safe_format import ModelFileError, load_model, save_model

__all__ = [
    "InconsistentVersionWarning",
    "ModelFileError",
    "PickleSupportMixin",
    "export_inputs",
    "export_model",
    "library_versions",
    "load_model",
    "save_model",
]
