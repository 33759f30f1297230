"""Persistence: pickle support and the pickle-free safe format.

Both are built on one pair of estimator methods, ``_fitted_state`` and
``_restore_fitted_state``, so the list of fitted attributes lives in the
estimator classes alone.
"""

from ._pickle import InconsistentVersionWarning, PickleSupportMixin, library_versions
from ._safe_format import ModelFileError, load_model, save_model

__all__ = [
    "InconsistentVersionWarning",
    "ModelFileError",
    "PickleSupportMixin",
    "library_versions",
    "load_model",
    "save_model",
]
