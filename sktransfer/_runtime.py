"""The one place that reads the hardware: device, precision, threads, seeds.

Everything that depends on the machine a fit runs on (which device, whether
it computes in bf16, how many threads and loader processes, the random
seeds) is decided here, so that each branch can be tested by simulating the
capability it depends on.

Nothing here changes a process-wide setting for the length of a fit
(``torch.backends.cudnn.benchmark``, ``torch.set_num_threads``): other
threads, and the caller, would see it change under them. The one lasting
change is :func:`limit_threads_in_worker`, in a worker process of a
parallel job only.
"""

import contextlib
import multiprocessing
import os
import sys

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._compat import cpu_has_native_bf16

__all__ = [
    "autocast_context",
    "check_device",
    "cpu_has_fast_bf16",
    "cuda_has_native_bf16",
    "default_num_workers",
    "device_scope",
    "device_unavailable_reason",
    "feature_dtype",
    "limit_threads_in_worker",
    "loader_workers",
    "resolve_device",
    "resolve_precision",
    "seeded",
    "torch_seed",
    "usable_num_workers",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- device ---------------------------------------------------------------

DEVICE_TYPES = ("cpu", "cuda", "mps")
_DEVICE_HINT = "Use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."


def _dask_worker_rank():
    """Rank of the Dask worker running this code, or None outside one.

    ``distributed`` is only consulted if something already imported it, so
    plain use never pays for importing Dask.
    """
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    name = worker.name
    try:
        return int(name)  # LocalCluster and dask-jobqueue name workers 0, 1, ...
    except (TypeError, ValueError):
        # Named workers: a stable number from the name, so a worker keeps
        # its GPU across tasks.
        return sum(str(name).encode())


def _dask_worker_gpu():
    """The GPU of this Dask worker, or None outside one (or with one GPU).

    A ``CUDA_VISIBLE_DEVICES`` set for the worker is the cluster's own GPU
    assignment: dask-cuda's ``LocalCUDACluster`` rotates the list so that
    each worker's GPU comes first, i.e. is ``cuda:0`` there, whatever its
    rank (``cuda:{rank}`` would be another worker's GPU). Only without it
    are the workers spread over the visible GPUs by rank.
    """
    rank = _dask_worker_rank()
    if rank is None:
        return None
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return "cuda:0"
    n_gpus = torch.cuda.device_count()
    return f"cuda:{rank % n_gpus}" if n_gpus > 1 else None


def _known_device(device):
    """``device`` as a ``torch.device`` of a supported type, or None."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return None
    return device if device.type in DEVICE_TYPES else None


def device_unavailable_reason(device):
    """Why ``device`` cannot be used on this machine, or None if it can.

    Parameters
    ----------
    device : str or torch.device
        A torch device string such as ``"cpu"`` or ``"cuda:1"``.

    Returns
    -------
    reason : str or None
        A phrase such as ``"no CUDA device is available"``; None when the
        device exists here.
    """
    known = _known_device(device)
    if known is None:
        return f"{str(device)!r} is not a supported device"
    if known.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        n = torch.cuda.device_count()
        if known.index is not None and known.index >= n:
            return (f"this machine has {n} CUDA device{'' if n == 1 else 's'} "
                    f"(cuda:0 to cuda:{n - 1})")
    if known.type == "mps" and not torch.backends.mps.is_available():
        return "no MPS device is available"
    return None


def check_device(device):
    """Raise ``ValueError`` saying why ``device`` cannot be used here, if so.

    Parameters
    ----------
    device : str
        A torch device string; ``"auto"`` always passes.

    Raises
    ------
    ValueError
        For a string that is no supported device (``"tpu"``), or a device
        this machine lacks (``"cuda"`` without CUDA, ``"cuda:7"`` with two
        GPUs), with the fix.
    """
    if device == "auto":
        return
    if _known_device(device) is None:
        raise ValueError(f"Unknown device {device!r}. {_DEVICE_HINT}")
    reason = device_unavailable_reason(device)
    if reason is not None:
        raise ValueError(
            f"Device {device!r} is not available: {reason}. Use 'auto' (the "
            "best device here) or 'cpu'."
        )


def resolve_device(device, owner=None):
    """The device a fit uses: ``device`` checked, or the pick of ``"auto"``.

    ``"auto"`` is CUDA when available, else the CPU. Inside a Dask worker
    with ``CUDA_VISIBLE_DEVICES`` set (dask-cuda sets it per worker, its own
    GPU first) it is ``cuda:0``; without it, on a host with several visible
    GPUs, workers are spread over them: ``cuda:{rank % n_gpus}``.

    Parameters
    ----------
    device : str
        The ``device`` parameter.
    owner : str or None, default=None
        Class name of the estimator, for the error message.

    Raises
    ------
    ValueError
        When ``device`` is not a device this machine has, naming the
        parameter and the fix.
    """
    if device != "auto":
        try:
            check_device(device)
        except ValueError as exc:
            owner = f" of {owner}" if owner else ""
            raise ValueError(
                f"The 'device' parameter{owner} is {device!r}, which cannot be "
                f"used here. {exc}"
            ) from None
        return str(device)
    if not torch.cuda.is_available():
        return "cpu"
    return _dask_worker_gpu() or "cuda"


def device_scope(device):
    """Make ``device`` the current CUDA device inside the block.

    Whatever uses the *current* device rather than a tensor's runs there
    instead of on GPU 0: pinning a DataLoader's batches (its pin thread
    takes the current device when the iterator starts), a ``GradScaler``'s
    state, ``torch.cuda.empty_cache``. The setting is the calling thread's
    own and is restored on exit. A no-op for other devices and for a bare
    ``"cuda"``, which is the current device already.
    """
    device = torch.device(device)
    if device.type != "cuda" or device.index is None:
        return contextlib.nullcontext()
    return torch.cuda.device(device.index)


# -- precision ------------------------------------------------------------


def cpu_has_fast_bf16():
    """Whether this CPU runs bf16 matrix work natively (AVX-512 BF16 or AMX)."""
    return cpu_has_native_bf16()


def cuda_has_native_bf16(device):
    """Whether the GPU ``device`` (not the current one) computes bf16 natively.

    Ampere and later (compute capability 8.0) do. ``is_bf16_supported()``
    is no test of that: it also counts emulation, and asks the *current*
    device, creating a CUDA context and a tensor there (GPU 0, when a fit
    runs on ``cuda:1``). The capability is read without either.
    """
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def resolve_precision(precision, device):
    """The autocast dtype for frozen forward passes, or None for float32.

    ``"auto"`` is bf16 on GPUs with native bf16, else fp16 (trained with loss
    scaling); on the CPU bf16 where it has native bf16 units, else float32.
    """
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if precision == "fp16" and kind != "cuda":
        raise ValueError(
            "precision='fp16' needs a CUDA device; on the CPU use 'bf16', "
            "'fp32' or 'auto'."
        )
    return PRECISIONS[precision]


def feature_dtype(dtype):
    """The dtype frozen features are stored in for autocast ``dtype``.

    A prefix run in bf16 or fp16 keeps its outputs in that dtype, in memory,
    on disk and in the cache, which halves what they take: its last layers
    computed them in that precision, so float32 would mostly hold rounding
    already done. They become float32 a batch at a time where they are
    used, never all at once, which would double them again.
    """
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def autocast_context(device, dtype):
    """``torch.autocast`` for ``dtype``, or a no-op for full precision."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# -- threads and processes ------------------------------------------------


def usable_num_workers(num_workers):
    """``num_workers``, or 0 where no DataLoader worker may be started.

    A daemonic process (a Dask worker, a ``multiprocessing`` pool worker) may
    not have children: its DataLoader would fail with "daemonic processes
    are not allowed to have children". It loads in-process instead.
    """
    if num_workers and multiprocessing.current_process().daemon:
        return 0
    return num_workers


def default_num_workers(n_images, batch_size):
    """Decode in background workers, but not for a handful of images, and
    never inside a daemonic process (see :func:`usable_num_workers`)."""
    if n_images <= 2 * batch_size:
        return 0
    return usable_num_workers(min(4, max(1, (os.cpu_count() or 1) - 1)))


def loader_workers(num_workers, n_images, batch_size):
    """DataLoader worker processes for ``n_images``: the ``num_workers``
    parameter (None picks with :func:`default_num_workers`), made usable
    here. Every loader of the package takes its count from here."""
    if num_workers is None:
        return default_num_workers(n_images, batch_size)
    return usable_num_workers(num_workers)


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


# -- seeds ----------------------------------------------------------------


def torch_seed(random_state):
    """An int seed for torch from a sklearn ``random_state``, or None."""
    if random_state is None:
        return None
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


@contextlib.contextmanager
def seeded(seed, device):
    """Seed torch inside the block without touching the caller's RNG state."""
    if seed is None:
        yield
        return
    device = torch.device(device)
    devices = []
    if device.type == "cuda":
        devices = [torch.cuda.current_device() if device.index is None
                   else device.index]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
