"""Training and prediction on a CUDA GPU; skipped where there is none."""

import io
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from sktransfer import PretrainedCNNClassifier

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"
)


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_auto_device_trains_and_predicts_on_the_gpu(colour_images, tiny_params,
                                                    unfreeze):
    X, y = colour_images
    params = dict(tiny_params, device="auto", unfreeze=unfreeze)
    clf = PretrainedCNNClassifier(**params).fit(X, y)
    assert clf.device_ == "cuda"
    assert all(p.is_cuda for p in clf.model_.parameters())
    assert clf.score(X, y) >= 0.9
    cpu = PretrainedCNNClassifier(**dict(params, device="cpu")).fit(X, y)
    # Mixed precision on the GPU, fp32 on the CPU: same decisions.
    assert (clf.predict(X) == cpu.predict(X)).mean() >= 0.9


def test_fp16_training_uses_loss_scaling(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(
        **dict(tiny_params, device="cuda", unfreeze=1, precision="fp16")
    ).fit(X, y)
    assert clf.frozen_dtype_ == torch.float16
    assert np.isfinite(clf.history_[:, "train_loss"]).all()
    assert clf.score(X, y) >= 0.9


def test_gpu_model_loads_and_predicts_on_the_cpu(colour_images, tiny_params,
                                                 monkeypatch):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**dict(tiny_params, device="auto")).fit(X, y)
    buffer = io.BytesIO()
    joblib.dump(clf, buffer)
    buffer.seek(0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="no CUDA device"):
        loaded = joblib.load(buffer)
    assert loaded.device_ == "cpu"
    assert all(not p.is_cuda for p in loaded.model_.parameters())
    assert (loaded.predict(X) == clf.predict(X)).mean() >= 0.9


def test_auto_precision_from_the_devices_capability(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**dict(tiny_params, device="cuda:0")).fit(X, y)
    major, _ = torch.cuda.get_device_capability(0)
    # Not is_bf16_supported(), which is True on pre-Ampere GPUs (emulation).
    assert clf.frozen_dtype_ == (torch.bfloat16 if major >= 8 else torch.float16)


class _RecordCudnn(Callback):
    def on_batch_begin(self, net, **kwargs):
        SEEN_BENCHMARK.append(torch.backends.cudnn.benchmark)


SEEN_BENCHMARK = []


@pytest.mark.parametrize("benchmark", [False, True])
def test_fit_leaves_cudnn_benchmark_alone(colour_images, tiny_params, monkeypatch,
                                          benchmark):
    X, y = colour_images
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", benchmark)
    SEEN_BENCHMARK.clear()
    PretrainedCNNClassifier(
        **dict(tiny_params, device="cuda", unfreeze=1, cache=False),
        net_params={"callbacks": [_RecordCudnn()]},
    ).fit(X, y)
    assert SEEN_BENCHMARK and set(SEEN_BENCHMARK) == {benchmark}
    assert torch.backends.cudnn.benchmark is benchmark


_FIT_ON_GPU_1 = """
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers tiny_cnn
import numpy as np
from sktransfer import PretrainedCNNClassifier
from sktransfer._compat import cuda_has_primary_context

X, y = np.array({X!r}, dtype=object), np.array({y!r})
# Pinned frozen pass (default cache), precision="auto", training, predict.
clf = PretrainedCNNClassifier(backbone="tiny_cnn", weights=None, max_epochs=2,
                              batch_size=4, device="cuda:1", random_state=0)
clf.fit(X, y).predict(X)
PretrainedCNNClassifier(backbone="tiny_cnn", weights=None, max_epochs=1,
                        batch_size=4, device="cuda:1", unfreeze=1, cache=False,
                        precision="fp16").fit(X, y)
print(cuda_has_primary_context(0), cuda_has_primary_context(1))
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_fit_on_cuda_1_creates_no_context_on_gpu_0(colour_images):
    X, y = colour_images
    script = _FIT_ON_GPU_1.format(tests=str(Path(__file__).parent),
                                  X=list(X), y=list(y))
    # A fresh process: this one has used GPU 0 already.
    result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["False", "True"]
