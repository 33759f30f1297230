import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from torch.nn.modules.batchnorm import _BatchNorm

from sktransfer import PretrainedCNNClassifier


def test_fit_predict_with_string_labels(colour_images, tiny_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(paths, labels)
    assert list(clf.classes_) == ["green", "red"]
    pred = clf.predict(paths)
    assert pred.dtype.kind == "U" and set(pred) <= {"green", "red"}
    proba = clf.predict_proba(paths)
    assert proba.shape == (len(paths), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    # Solid colours are trivially separable: the head must learn them.
    assert clf.score(paths, labels) == 1.0


def test_multiclass_and_integer_labels(three_class_images, tiny_params):
    paths, labels = three_class_images
    y = np.array([{"red": 3, "green": 7, "blue": 11}[s] for s in labels])
    clf = PretrainedCNNClassifier(**dict(tiny_params, max_epochs=8)).fit(paths, y)
    assert list(clf.classes_) == [3, 7, 11]
    pred = clf.predict(paths)
    assert pred.dtype.kind == "i"
    assert clf.score(paths, y) >= 0.9


def test_unfitted_estimator_raises(colour_images):
    with pytest.raises(NotFittedError):
        PretrainedCNNClassifier().predict(colour_images[0])


def test_init_stores_parameters_only():
    clf = PretrainedCNNClassifier(backbone="no_such_model", unfreeze=99)
    assert clf.get_params()["backbone"] == "no_such_model"
    assert not [k for k in vars(clf) if k.endswith("_")]


def test_clone_get_params_set_params(colour_images, tiny_params):
    clf = PretrainedCNNClassifier(**tiny_params)
    clf.set_params(unfreeze=1, hidden_layer_sizes=(8,))
    assert clf.get_params()["unfreeze"] == 1
    clf.fit(*colour_images)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params()
    assert not hasattr(copy, "model_")


def test_fit_never_rewrites_parameters(colour_images, tiny_params):
    params = dict(tiny_params, device="auto", precision="auto", cache="auto",
                  num_workers=None)
    clf = PretrainedCNNClassifier(**params)
    before = clf.get_params()
    clf.fit(*colour_images)
    assert clf.get_params() == before
    assert clf.device == "auto"
    assert clf.device_ == ("cuda" if torch.cuda.is_available() else "cpu")
    assert clf.batch_size_ == clf.batch_size == 8


@pytest.mark.parametrize(
    "extra",
    [{}, {"num_workers": 1, "augment": True, "cache": False},
     {"unfreeze": 1, "cache": False},
     {"unfreeze": 1, "early_stopping": True, "validation_fraction": 0.25}],
)
def test_random_state_makes_fits_repeatable(colour_images, tiny_params, extra):
    X, y = colour_images
    params = {**tiny_params, **extra}
    first = PretrainedCNNClassifier(**params).fit(X, y).predict_proba(X)
    second = PretrainedCNNClassifier(**params).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(first, second)
    other = PretrainedCNNClassifier(**{**params, "random_state": 1}).fit(X, y)
    assert not np.array_equal(first, other.predict_proba(X))



def test_pipeline(colour_images, tiny_params):
    paths, labels = colour_images
    pipe = Pipeline(
        [
            ("as_array", FunctionTransformer(np.asarray, validate=False)),
            ("clf", PretrainedCNNClassifier(**tiny_params)),
        ]
    )
    pipe.fit(paths, labels)
    assert pipe.score(paths, labels) == 1.0


def test_cross_val_score(colour_images, tiny_params):
    paths, labels = colour_images
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    clf = PretrainedCNNClassifier(**dict(tiny_params, max_epochs=8))
    scores = cross_val_score(clf, paths, labels,
                             cv=cv)
    assert scores.shape == (3,) and scores.min() >= 0.75


def test_grid_search_over_backbone_and_unfreeze(colour_images, tiny_params):
    paths, labels = colour_images
    grid = GridSearchCV(
        PretrainedCNNClassifier(**dict(tiny_params, image_size=32)),
        {"backbone": ["tiny_cnn", "resnet18"], "unfreeze": [0, 1, 2]},
        cv=2,
    ).fit(paths, labels)
    assert len(grid.cv_results_["params"]) == 6
    assert grid.best_params_["backbone"] in ("tiny_cnn", "resnet18")
    assert grid.best_estimator_.predict(paths[:2]).shape == (2,)


def test_joblib_round_trip(colour_images, tiny_params, tmp_path):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**dict(tiny_params, unfreeze=1)).fit(paths, labels)
    joblib.dump(clf, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.predict_proba(paths), clf.predict_proba(paths))
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)


def _frozen_snapshot(module):
    return {k: v.clone() for k, v in module.frozen.state_dict().items()}


def _bn_buffers(module):
    return {
        name: (m.running_mean.clone(), m.running_var.clone())
        for name, m in module.named_modules()
        if isinstance(m, _BatchNorm)
    }


@pytest.mark.parametrize("cache", ["auto", False])
@pytest.mark.parametrize("augment", [False, True])
def test_frozen_weights_and_batchnorm_stay_bit_identical(
    colour_images, tiny_params, cache, augment
):
    """Neither the frozen weights nor their BatchNorm statistics change in fit."""
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(
        **dict(tiny_params, unfreeze=1, cache=cache, augment=augment, lr=0.1)
    )
    # Build the exact module fit will build (same seed), and snapshot it.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = clone(clf).set_params(max_epochs=1)
        reference.fit(paths, labels)
    before = _frozen_snapshot(reference.model_)
    clf.fit(paths, labels)
    after = _frozen_snapshot(clf.model_)
    assert before.keys() == after.keys() and before
    for key in before:
        assert torch.equal(before[key], after[key]), key
    # The trainable block did change, so training really happened.
    untouched = PretrainedCNNClassifier(**dict(tiny_params, unfreeze=1, max_epochs=1))
    untouched.fit(paths, labels)
    trained = clf.model_.suffix.trainable.state_dict()
    assert any(
        not torch.equal(v, untouched.model_.suffix.trainable.state_dict()[k])
        for k, v in trained.items()
    )


def test_frozen_batchnorm_stays_in_eval_mode_during_training(
    colour_images, tiny_params
):
    """skorch switches modules to train mode each step; frozen BN must not."""
    from skorch.callbacks import Callback

    modes = []

    class Spy(Callback):
        def on_batch_begin(self, net, training=False, **kwargs):
            if training:
                model = net.module_
                frozen = getattr(model, "frozen", None)
                if frozen is not None:
                    modes.append(any(m.training for m in frozen.modules()))

    paths, labels = colour_images
    PretrainedCNNClassifier(
        **dict(tiny_params, unfreeze=1, cache=False,
               net_params={"callbacks": [("spy", Spy())]})
    ).fit(paths, labels)
    assert modes and not any(modes)


def test_batchnorm_stats_in_unfrozen_blocks(colour_images, tiny_params):
    paths, labels = colour_images
    running = {}
    for mode in ("frozen", "train"):
        clf = PretrainedCNNClassifier(**dict(tiny_params, unfreeze=1, batchnorm=mode))
        clf.fit(paths, labels)
        bn = next(m for m in clf.model_.suffix.trainable.modules()
                  if isinstance(m, _BatchNorm))
        running[mode] = bn.running_mean.clone()
    # Fresh BatchNorm starts at zero mean: "frozen" keeps it, "train" updates it.
    assert torch.count_nonzero(running["frozen"]) == 0
    assert torch.count_nonzero(running["train"]) > 0


def test_early_stopping_stops_after_n_iter_no_change(colour_images, tiny_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(
        **dict(tiny_params, max_epochs=200, lr=0.5, early_stopping=True,
               validation_fraction=0.25, n_iter_no_change=2)
    ).fit(paths, labels)
    losses = list(clf.history_[:, "valid_loss"])
    best = int(np.argmin(losses))
    # It stopped early, exactly n_iter_no_change epochs after the best one.
    assert len(losses) < 200
    assert len(losses) - 1 - best == 2
    assert clf.history_[-1, "valid_acc"] >= 0.5


def test_without_early_stopping_every_image_trains(colour_images, tiny_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, validation_fraction=0.5)
    clf.fit(paths, labels)  # validation_fraction is only used with early stopping
    assert "valid_loss" not in clf.history_[-1]
    assert len(clf.history_) == tiny_params["max_epochs"]


def test_transform_returns_penultimate_features(colour_images, tiny_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**dict(tiny_params, hidden_layer_sizes=(5,)))
    clf.fit(paths, labels)
    assert clf.transform(paths).shape == (len(paths), 5)


def test_set_output_pandas_in_a_pipeline(colour_images, tiny_params):
    pd = pytest.importorskip("pandas")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    paths, labels = colour_images
    pipe = make_pipeline(
        PretrainedCNNClassifier(**dict(tiny_params, hidden_layer_sizes=(5,))),
        LogisticRegression(),
    ).set_output(transform="pandas")
    pipe.fit(paths, labels)
    embedded = pipe[:-1].transform(paths)
    assert isinstance(embedded, pd.DataFrame)
    assert list(embedded.columns) == [f"pretrainedcnnclassifier{i}" for i in range(5)]
    assert list(pipe[-1].feature_names_in_) == list(embedded.columns)
    assert set(pipe.predict(paths)) <= set(labels)


# -- test-time augmentation ----------------------------------------------------


def _manual_tta(clf, paths, tta):
    """Mean softmax over the views, computed outside predict_proba."""
    from sktransfer._augment import tta_views
    from sktransfer._decoded import DecodedImages

    images = DecodedImages.decode(paths, clf.preprocessing_).images
    with torch.inference_mode():
        probas = [
            torch.softmax(clf.model_(view(images)).double(), dim=1)
            for view in tta_views(tta, clf.preprocessing_)
        ]
    return torch.stack(probas).mean(0).numpy(), len(probas)


@pytest.mark.parametrize("tta, n_views", [("flip", 2), (True, 2), ("crops", 10)])
def test_tta_averages_the_views_probabilities(
    colour_images, tiny_params, tta, n_views
):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, unfreeze=1).fit(paths, labels)
    plain = clf.predict_proba(paths)
    clf.set_params(tta=tta)
    averaged = clf.predict_proba(paths)
    expected, n = _manual_tta(clf, paths, tta)
    assert n == n_views
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0, rtol=1e-9)
    assert not np.allclose(averaged, plain)  # the extra views changed something
    np.testing.assert_array_equal(
        clf.predict(paths), clf.classes_[averaged.argmax(axis=1)]
    )


def test_tta_off_is_the_evaluation_view(colour_images, tiny_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(paths, labels)
    expected, n = _manual_tta(clf, paths, False)
    assert n == 1
    np.testing.assert_allclose(clf.predict_proba(paths), expected, atol=1e-5)


def test_tta_never_changes_transform(colour_images, tiny_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(paths, labels)
    before = clf.transform(paths)
    np.testing.assert_array_equal(clf.set_params(tta="crops").transform(paths), before)


def test_tta_reports_every_bad_file(colour_images, tiny_params, tmp_path):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, tta=True).fit(paths, labels)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        clf.predict_proba(np.append(paths, str(broken)).astype(object))


def test_unknown_tta_or_policy_is_a_clear_error(colour_images, tiny_params):
    paths, labels = colour_images
    with pytest.raises(ValueError, match="'tta' parameter"):
        PretrainedCNNClassifier(**tiny_params, tta="flips").fit(paths, labels)
    with pytest.raises(ValueError, match="'augment' parameter"):
        PretrainedCNNClassifier(**tiny_params, augment="classical").fit(paths, labels)
