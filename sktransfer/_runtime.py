"""The one place that reads the hardware: device, precision, threads, seeds.

Everything that depends on the machine a fit runs on (which device, whether
it computes in bf16, how many threads and loader processes, cuDNN's
autotuner, the random seeds) is decided here, so that each branch can be
tested by simulating the capability it depends on.
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
    "cpu_has_fast_bf16",
    "cudnn_autotuning",
    "default_num_workers",
    "limit_threads_in_worker",
    "resolve_device",
    "resolve_precision",
    "seeded",
    "torch_seed",
    "torch_threads",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- device ---------------------------------------------------------------


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


def resolve_device(device):
    """``"auto"`` picks CUDA when available; other values pass through.

    Inside a Dask worker on a host with several visible GPUs, ``"auto"``
    spreads workers over them: ``cuda:{rank % n_gpus}``. Restricting a worker
    with ``CUDA_VISIBLE_DEVICES`` leaves it one visible GPU, which it uses.
    """
    if device != "auto":
        return str(device)
    if not torch.cuda.is_available():
        return "cpu"
    n_gpus = torch.cuda.device_count()
    rank = _dask_worker_rank() if n_gpus > 1 else None
    return "cuda" if rank is None else f"cuda:{rank % n_gpus}"


# -- precision ------------------------------------------------------------


def cpu_has_fast_bf16():
    """Whether this CPU runs bf16 matrix work natively (AVX-512 BF16 or AMX)."""
    return cpu_has_native_bf16()


def resolve_precision(precision, device):
    """The autocast dtype for frozen forward passes, or None for float32."""
    kind = torch.device(device).type
    if precision == "auto":
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    if precision == "fp16" and kind != "cuda":
        raise ValueError(
            "precision='fp16' needs a CUDA device; on the CPU use 'bf16', "
            "'fp32' or 'auto'."
        )
    return PRECISIONS[precision]


def autocast_context(device, dtype):
    """``torch.autocast`` for ``dtype``, or a no-op for full precision."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def cudnn_autotuning(device):
    """Let cuDNN time its convolution algorithms and keep the fastest.

    Images arrive at one fixed size, so the search is paid once per shape.
    Off the GPU, or when the user asked cuDNN for deterministic results,
    nothing changes.
    """
    cudnn = torch.backends.cudnn
    if torch.device(device).type != "cuda" or cudnn.deterministic:
        yield
        return
    before = cudnn.benchmark
    cudnn.benchmark = True
    try:
        yield
    finally:
        cudnn.benchmark = before


# -- threads and processes ------------------------------------------------


def default_num_workers(n_images, batch_size):
    """Decode in background workers, but not for a handful of images."""
    if n_images <= 2 * batch_size:
        return 0
    return min(4, max(1, (os.cpu_count() or 1) - 1))


@contextlib.contextmanager
def torch_threads(n_threads):
    """Run the block with ``n_threads`` intra-op threads, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
