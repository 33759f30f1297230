"""The skorch net: mixed-precision loss scaling, compile."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from torch import nn

from sktransfer import PretrainedCNNClassifier
from sktransfer._training import TransferNet


def _toy_problem(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    return X, y


class _GradientLog(Callback):
    """Remember the gradient norm each step hands to callbacks."""

    def on_train_begin(self, net, **kwargs):
        self.norms = []

    def on_grad_computed(self, net, named_parameters, **kwargs):
        grads = [p.grad for _, p in named_parameters if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads])).item())


def _net(autocast_dtype, callbacks=()):
    return TransferNet(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.SGD,
        lr=0.1,
        max_epochs=5,
        batch_size=16,
        train_split=None,
        device="cpu",
        verbose=0,
        autocast_dtype=autocast_dtype,
        callbacks=list(callbacks),
    )


def test_float16_training_scales_the_loss_and_callbacks_see_true_gradients():
    X, y = _toy_problem()
    torch.manual_seed(0)
    log_fp16 = _GradientLog()
    net = _net(torch.float16, callbacks=[("grads", log_fp16)]).fit(X, y)
    assert isinstance(net.grad_scaler_, torch.amp.GradScaler)
    assert net.grad_scaler_.get_scale() > 1  # the loss really was scaled
    losses = net.history[:, "train_loss"]
    assert losses[-1] < losses[0]

    torch.manual_seed(0)
    log_fp32 = _GradientLog()
    _net(None, callbacks=[("grads", log_fp32)]).fit(X, y)
    # Unscaled before callbacks: the first step's gradient matches fp32's to
    # half precision, not to a factor of the scale (65536 at the start).
    assert log_fp16.norms[0] == pytest.approx(log_fp32.norms[0], rel=2e-2)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_no_loss_scaling_without_float16(dtype):
    X, y = _toy_problem()
    net = _net(dtype).fit(X, y)
    assert net.grad_scaler_ is None


def test_compile_goes_through_skorch(colour_images, tiny_params, monkeypatch):
    X, y = colour_images
    params = dict(tiny_params, unfreeze=1)
    plain = PretrainedCNNClassifier(**params).fit(X, y)
    compile_calls = []
    real_compile = torch.compile

    def spy(module, **kwargs):
        compile_calls.append(kwargs)
        return real_compile(module, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    # The "eager" backend traces with TorchDynamo but needs no C++ compiler.
    compiled = PretrainedCNNClassifier(
        **params, compile=True, net_params={"compile__backend": "eager"}
    ).fit(X, y)
    np.testing.assert_allclose(
        compiled.predict_proba(X), plain.predict_proba(X), atol=1e-5
    )
    assert compiled.score(X, y) == plain.score(X, y)
    # The trained module only (not the loss), as one graph, with the
    # user's compile__ arguments.
    assert compile_calls == [{"fullgraph": True, "backend": "eager"}]
