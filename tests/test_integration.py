"""The classifier inside scikit-learn's tools, and continued training."""

import joblib
import matplotlib
import numpy as np
import pytest
import sklearn
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import (
    StratifiedKFold,
    cross_validate,
    learning_curve,
    validation_curve,
)

from sktransfer import PretrainedCNNClassifier

matplotlib.use("Agg")
CV = StratifiedKFold(2, shuffle=True, random_state=0)


@pytest.fixture
def metadata_routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def head_weights(clf):
    return clf.model_.suffix.head[-1].weight.detach().clone()


# -- model selection ------------------------------------------------------

def test_learning_curve(colour_images, tiny_params):
    paths, labels = colour_images
    sizes, train_scores, test_scores = learning_curve(
        PretrainedCNNClassifier(**tiny_params), paths, labels,
        train_sizes=[0.5, 1.0], cv=CV, shuffle=True, random_state=0,
    )
    assert list(sizes) == [6, 12]
    assert train_scores.shape == test_scores.shape == (2, 2)
    assert np.all((test_scores >= 0) & (test_scores <= 1))
    assert test_scores[-1].mean() >= 0.75


def test_validation_curve_over_unfreeze(colour_images, tiny_params):
    paths, labels = colour_images
    train_scores, test_scores = validation_curve(
        PretrainedCNNClassifier(**tiny_params), paths, labels,
        param_name="unfreeze", param_range=[0, 1], cv=CV,
    )
    assert test_scores.shape == (2, 2)
    assert np.all((test_scores >= 0) & (test_scores <= 1))


def test_cross_validate_returns_fitted_estimators(colour_images, tiny_params):
    paths, labels = colour_images
    result = cross_validate(
        PretrainedCNNClassifier(**tiny_params), paths, labels, cv=CV,
        return_estimator=True, scoring=["accuracy", "neg_log_loss"],
    )
    assert len(result["estimator"]) == 2
    assert {tuple(est.classes_) for est in result["estimator"]} == {("green", "red")}
    assert result["test_accuracy"].mean() >= 0.75
    # Each fold trains its own head.
    w0, w1 = (head_weights(est) for est in result["estimator"])
    assert not torch.equal(w0, w1)


def test_calibrated_classifier(colour_images, tiny_params):
    paths, labels = colour_images
    calibrated = CalibratedClassifierCV(PretrainedCNNClassifier(**tiny_params), cv=2)
    calibrated.fit(paths, labels)
    proba = calibrated.predict_proba(paths)
    assert proba.shape == (len(paths), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert calibrated.score(paths, labels) >= 0.75


# -- sample weights -------------------------------------------------------

def test_uniform_sample_weight_equals_none(colour_images, tiny_params):
    paths, labels = colour_images
    plain = PretrainedCNNClassifier(**tiny_params).fit(paths, labels)
    uniform = PretrainedCNNClassifier(**tiny_params).fit(
        paths, labels, sample_weight=np.full(len(paths), 3.0)
    )
    torch.testing.assert_close(head_weights(plain), head_weights(uniform))
    np.testing.assert_allclose(plain.history_[:, "train_loss"],
                               uniform.history_[:, "train_loss"], rtol=1e-5)


def test_sample_weight_changes_the_fit(colour_images, tiny_params):
    paths, labels = colour_images
    # Only the red images count: the model learns to call everything red.
    weight = (labels == "red").astype(float)
    clf = PretrainedCNNClassifier(**dict(tiny_params, max_epochs=8))
    clf.fit(paths, labels, sample_weight=weight)
    assert (clf.predict(paths) == "red").all()


def test_sample_weight_without_cache_and_with_validation(colour_images, tiny_params):
    paths, labels = colour_images
    weight = np.where(labels == "red", 2.0, 1.0)
    clf = PretrainedCNNClassifier(**tiny_params, cache=False, unfreeze=1,
                                  early_stopping=True, validation_fraction=0.25)
    clf.fit(paths, labels, sample_weight=weight)
    assert np.isfinite(clf.history_[:, "valid_loss"]).all()


def test_bad_sample_weight(colour_images, tiny_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params)
    with pytest.raises(ValueError, match="Negative values"):
        clf.fit(paths, labels, sample_weight=-np.ones(len(paths)))
    with pytest.raises(ValueError, match="non-zero"):
        clf.fit(paths, labels, sample_weight=np.zeros(len(paths)))


def test_sample_weight_routed_through_cross_validate(
    colour_images, tiny_params, metadata_routing
):
    paths, labels = colour_images
    weight = (labels == "red").astype(float)
    clf = PretrainedCNNClassifier(**dict(tiny_params, max_epochs=8))
    clf.set_fit_request(sample_weight=True).set_score_request(sample_weight=False)
    routed = cross_validate(clf, paths, labels, cv=CV, return_estimator=True,
                            params={"sample_weight": weight})
    # Weighted folds predict "red" everywhere: accuracy 1/2 on balanced folds.
    np.testing.assert_allclose(routed["test_score"], 0.5)
    for est in routed["estimator"]:
        assert (est.predict(paths) == "red").all()


# -- continued training ---------------------------------------------------

def test_warm_start_continues_from_fitted_weights(colour_images, tiny_params):
    paths, labels = colour_images
    params = dict(tiny_params, max_epochs=2)
    clf = PretrainedCNNClassifier(**params, warm_start=True).fit(paths, labels)
    after_first = head_weights(clf)
    first_loss = clf.history_[-1, "train_loss"]
    clf.fit(paths, labels)
    assert len(clf.history_) == 4
    assert clf.history_[:, "epoch"] == [1, 2, 3, 4]
    assert not torch.equal(head_weights(clf), after_first)
    assert clf.history_[-1, "train_loss"] < first_loss
    # Without warm_start, a second fit starts again from the same seed.
    cold = PretrainedCNNClassifier(**params).fit(paths, labels)
    cold_first = head_weights(cold)
    cold.fit(paths, labels)
    assert len(cold.history_) == 2
    torch.testing.assert_close(head_weights(cold), cold_first)


def test_partial_fit_runs_one_epoch_on_new_data(three_class_images, tiny_params):
    paths, labels = three_class_images
    clf = PretrainedCNNClassifier(**tiny_params)
    classes = ["blue", "green", "red"]
    clf.partial_fit(paths[labels != "blue"], labels[labels != "blue"],
                    classes=classes)
    assert len(clf.history_) == 1
    assert list(clf.classes_) == classes
    before = head_weights(clf)
    clf.partial_fit(paths[labels == "blue"], labels[labels == "blue"])
    assert len(clf.history_) == 2
    assert not torch.equal(head_weights(clf), before)
    for _ in range(6):
        clf.partial_fit(paths, labels)
    assert clf.score(paths, labels) >= 0.8


def _adam_steps(clf):
    """Steps taken by the kept optimizer state (one per training batch)."""
    optimizer_class, state = clf._optimizer_state
    return {int(s["step"]) for s in state["state"].values()}


def test_continued_training_resumes_the_optimizer(colour_images, tiny_params,
                                                  tmp_path):
    paths, labels = colour_images  # 24 images, batch_size 8: 3 steps an epoch
    clf = PretrainedCNNClassifier(**tiny_params)
    for n in range(1, 4):
        clf.partial_fit(paths, labels)
        assert _adam_steps(clf) == {3 * n}
    # A pickled model continues too; its kept state is on the CPU.
    path = tmp_path / "model.joblib"
    joblib.dump(clf, path)
    loaded = joblib.load(path)
    assert all(t.device.type == "cpu"
               for s in loaded._optimizer_state[1]["state"].values()
               for t in s.values())
    loaded.partial_fit(paths, labels)
    assert _adam_steps(loaded) == {12}
    # warm_start: the state continues, a changed lr is used from now on.
    warm = PretrainedCNNClassifier(**tiny_params, warm_start=True)
    warm.fit(paths, labels).set_params(lr=0.001).fit(paths, labels)
    assert _adam_steps(warm) == {18}
    assert {g["lr"] for g in warm._optimizer_state[1]["param_groups"]} == {0.001}
    # Another optimizer cannot take Adam's state: it starts afresh.
    warm.set_params(optimizer="sgd").fit(paths, labels)
    assert warm._optimizer_state[0] is torch.optim.SGD
    # A fit that does not continue keeps no state, and a later fit
    # starts a fresh optimizer.
    cold = PretrainedCNNClassifier(**tiny_params).fit(paths, labels)
    assert cold._optimizer_state is None


def test_resumed_optimizer_trains_like_one_long_fit(colour_images, tiny_params):
    """Three one-epoch continuations end near one three-epoch fit; restarting
    Adam every epoch (its first steps are full-size) ends farther away."""
    paths, labels = colour_images
    params = dict(tiny_params, lr=0.01, max_epochs=1)
    one_fit = PretrainedCNNClassifier(**dict(params, max_epochs=3))
    reference = head_weights(one_fit.fit(paths, labels))
    resumed = PretrainedCNNClassifier(**params)
    for _ in range(3):
        resumed.partial_fit(paths, labels)
    restarted = PretrainedCNNClassifier(**params)
    for _ in range(3):
        restarted.partial_fit(paths, labels)
        restarted._optimizer_state = None  # what a fresh optimizer would do
    def distance(clf):
        return torch.linalg.norm(head_weights(clf) - reference)
    assert distance(resumed) < distance(restarted)


def test_partial_fit_rejects_unknown_labels(colour_images, three_class_images,
                                            tiny_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(paths, labels)
    new_paths, new_labels = three_class_images
    with pytest.raises(ValueError, match=r"labels \['blue'\] that are not in"):
        clf.partial_fit(new_paths, new_labels)
    with pytest.raises(ValueError, match="differs from the classes"):
        clf.partial_fit(paths, labels, classes=["a", "b"])


# -- progress, plots and display ------------------------------------------

def test_verbose_zero_prints_nothing(colour_images, tiny_params, capfd):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, early_stopping=True,
                                  validation_fraction=0.25)
    clf.fit(paths, labels).predict(paths)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_verbose_one_shows_progress_and_epochs(colour_images, tiny_params, capfd):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**dict(tiny_params, verbose=1), cache=False)
    clf.fit(paths, labels)
    out, err = capfd.readouterr()
    assert "train_loss" in out and "dur" in out  # skorch's epoch table
    assert len([line for line in out.splitlines() if line.strip()[:1] == "3"]) == 1
    assert "Checking images" in err  # tqdm bar on stderr (no cache: decode only)
    clf.predict(paths)
    _, err = capfd.readouterr()
    assert "Extracting features" in err


def test_plot_history(colour_images, tiny_params):
    import matplotlib.pyplot as plt

    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, early_stopping=True,
                                  validation_fraction=0.25, n_iter_no_change=10)
    clf.fit(paths, labels)
    ax = clf.plot_history()
    labels_drawn = {line.get_label() for line in ax.get_lines()}
    assert labels_drawn == {"training loss", "validation loss"}
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(),
                               clf.history_[:, "train_loss"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "validation accuracy" in legend
    _, given = plt.subplots()
    assert clf.plot_history(ax=given) is given
    plt.close("all")


def test_plot_history_without_matplotlib(colour_images, tiny_params, monkeypatch):
    import sys

    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(paths, labels)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"sktransfer\[plot\]"):
        clf.plot_history()


def test_confusion_matrix_display(three_class_images, tiny_params):
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    paths, labels = three_class_images
    clf = PretrainedCNNClassifier(**dict(tiny_params, max_epochs=6))
    clf.fit(paths, labels)
    display = ConfusionMatrixDisplay.from_estimator(clf, paths, labels)
    assert display.confusion_matrix.shape == (3, 3)
    assert display.confusion_matrix.sum() == len(paths)
    assert list(display.display_labels) == ["blue", "green", "red"]
    plt.close("all")


def test_html_repr_shows_parameters(tiny_params):
    clf = PretrainedCNNClassifier(**tiny_params, unfreeze=2)
    with sklearn.config_context(display="diagram"):
        html = clf._repr_html_()
    assert "PretrainedCNNClassifier" in html
    assert "unfreeze" in html and "tiny_cnn" in html


def test_partial_fit_continues_a_loaded_model(colour_images, tiny_params, tmp_path):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(paths, labels)
    clf.save(tmp_path / "model")
    loaded = PretrainedCNNClassifier.load(tmp_path / "model")
    torch.testing.assert_close(head_weights(loaded), head_weights(clf))
    assert loaded.history_.to_list() == clf.history_.to_list()
    loaded.partial_fit(paths, labels)
    assert loaded.history_[:, "epoch"] == [1, 2, 3, 4]  # history continues
    # One more epoch from the loaded weights, not a fresh start: the loss is
    # already that of a trained head.
    assert loaded.history_[-1, "train_loss"] < clf.history_[0, "train_loss"]
    assert loaded.score(paths, labels) >= 0.9
