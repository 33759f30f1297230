"""The L-BFGS head fit: LogisticRegression's optimum, and where LP-FT starts."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor
from sktransfer._probe import fit_head_lbfgs


@pytest.fixture
def probe_params(tiny_params):
    return dict(tiny_params, head_solver="lbfgs")


def test_frozen_head_reaches_logistic_regressions_optimum(
    three_class_images, probe_params
):
    X, y = three_class_images
    clf = PretrainedCNNClassifier(**probe_params).fit(X, y)
    extractor_params = {k: probe_params[k] for k in
                        ("backbone", "weights", "random_state", "device")}
    features = PretrainedFeatureExtractor(**extractor_params).fit(X).transform(X)
    lr = LogisticRegression(C=1.0, tol=1e-8, max_iter=5000).fit(features, y)
    np.testing.assert_allclose(
        clf.predict_proba(X), lr.predict_proba(features), atol=2e-3
    )
    # No epoch ran: the probe is the whole fit.
    assert len(clf.history_) == 1 and clf.history_[-1, "lbfgs_iterations"] > 1


def test_C_sets_the_penalty(three_class_images, probe_params):
    X, y = three_class_images
    weak = PretrainedCNNClassifier(**dict(probe_params, C=100.0)).fit(X, y)
    strong = PretrainedCNNClassifier(**dict(probe_params, C=1e-4)).fit(X, y)
    norm = lambda clf: float(clf.model_.suffix.head[-1].weight.detach().norm())  # noqa: E731
    assert norm(strong) < 0.1 * norm(weak)


def test_lbfgs_on_a_separable_problem_converges():
    torch.manual_seed(0)
    x = torch.randn(60, 4)
    t = (x[:, 0] > 0).long()
    head = torch.nn.Sequential(torch.nn.Linear(4, 2))
    losses = fit_head_lbfgs(head, x, t, C=10.0)
    assert losses[-1] < losses[0] / 2
    assert (head(x).argmax(1) == t).float().mean() == 1.0


def test_unfreeze_starts_fine_tuning_from_the_probed_head(
    colour_images, probe_params, monkeypatch
):
    """LP-FT: the probe runs first, then the epochs, starting from its head."""
    import sktransfer._recipe as recipe_module

    X, y = colour_images
    calls = []
    real = recipe_module.fit_head_lbfgs

    def spy(head, *args, **kwargs):
        calls.append("probe")
        return real(head, *args, **kwargs)

    monkeypatch.setattr(recipe_module, "fit_head_lbfgs", spy)
    clf = PretrainedCNNClassifier(**dict(probe_params, unfreeze=1)).fit(X, y)
    assert calls == ["probe"]
    assert len(clf.history_) == probe_params["max_epochs"]  # then every epoch


def test_auto_probes_only_the_frozen_head(colour_images, tiny_params, monkeypatch):
    import sktransfer._recipe as recipe_module

    X, y = colour_images
    calls = []
    monkeypatch.setattr(recipe_module, "fit_head_lbfgs",
                        lambda *a, **k: calls.append(1) or [0.0])
    params = dict(tiny_params, head_solver="auto")
    PretrainedCNNClassifier(**dict(params, unfreeze=1)).fit(X, y)
    assert calls == []
    PretrainedCNNClassifier(**dict(params, unfreeze=0)).fit(X, y)
    assert calls == [1]
