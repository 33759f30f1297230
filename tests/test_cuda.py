"""Training and prediction on a CUDA GPU; skipped where there is none."""

import io

import joblib
import numpy as np
import pytest
import torch

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
