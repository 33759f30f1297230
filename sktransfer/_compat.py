"""Every private API of another library that sktransfer uses, in one place.

Each import names the versions it was checked against. When one of these
libraries moves a private name, this is the only file to change.

Checked against: scikit-learn 1.6 to 1.8, skorch 1.0 to 1.3, torch 2.3 to
2.14, Pillow 10 to 12.
"""

import os

import sklearn
import torch
from PIL import Image

# scikit-learn: parameter validation and the fit wrapper are the documented
# way for third-party estimators to validate like scikit-learn's own
# (developer guide), but live in private modules.
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight

# skorch: helpers of NeuralNet's own training step, reused by the fp16 step.
from skorch.dataset import unpack_data
from skorch.utils import TeeGenerator

# torch: the common base class of BatchNorm1d/2d/3d and SyncBatchNorm.
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "BatchNormBase",
    "Interval",
    "StrOptions",
    "TeeGenerator",
    "check_sample_weight",
    "cpu_has_native_bf16",
    "cuda_has_primary_context",
    "fit_context",
    "pillow_openers",
    "sklearn_fit_wrapper_file",
    "unpack_data",
]

BatchNormBase = _BatchNorm
check_sample_weight = _check_sample_weight
fit_context = _fit_context


def sklearn_fit_wrapper_file():
    """Source file of scikit-learn's ``_fit_context`` wrapper frame."""
    return os.path.join(os.path.dirname(sklearn.__file__), "base.py")


def cpu_has_native_bf16():
    """Whether this CPU runs bf16 matrix work natively (AVX-512 BF16 or AMX).

    torch reports this through private functions of ``torch.cpu``; a torch
    without them is taken to have no native bf16.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cuda_has_primary_context(index):
    """Whether this process holds a CUDA context on GPU ``index``, or None.

    What ``torch.cuda.device`` itself checks so as not to create one; the
    tests use it to prove that a fit on ``cuda:1`` leaves GPU 0 alone. None
    where torch lacks the private function.
    """
    check = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    return None if check is None else bool(check(index))


def pillow_openers():
    """Pillow's registry of format openers: ``{format: (factory, accept)}``.

    ``Image.init()`` loads every plugin first, as ``Image.open`` does.
    """
    Image.init()
    return Image.OPEN
