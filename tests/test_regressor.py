"""PretrainedCNNRegressor on generated images whose target is their mean
brightness."""

import pickle

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.utils import estimator_checks as ec

from sktransfer import PretrainedCNNRegressor, PretrainedFeatureExtractor

NAME = "PretrainedCNNRegressor"


@pytest.fixture(scope="module")
def brightness_images(tmp_path_factory):
    """30 noisy grey PNGs and their mean brightness (0-255)."""
    folder = tmp_path_factory.mktemp("brightness")
    rng = np.random.default_rng(0)
    paths, brightness = [], []
    for i in range(30):
        level = rng.uniform(20, 235)
        arr = np.clip(level + rng.normal(0, 25, (32, 32, 3)), 0, 255)
        arr = arr.astype(np.uint8)
        path = folder / f"image_{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(str(path))
        brightness.append(arr.mean())
    return np.array(paths, dtype=object), np.array(brightness)


@pytest.fixture
def ridge_params(tiny_params):
    """The default for unfreeze=0: ridge regression by L-BFGS."""
    return dict(tiny_params, head_solver="auto", alpha=1e-3)


def _embeddings(X):
    extractor = PretrainedFeatureExtractor(
        backbone="tiny_cnn", weights=None, random_state=0, device="cpu")
    return extractor.fit(X).transform(X)


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_probe_is_ridge_on_the_embeddings(brightness_images, ridge_params,
                                              alpha, weighted):
    X, y = brightness_images
    weights = np.linspace(0.5, 2.0, len(X)) if weighted else None
    reg = PretrainedCNNRegressor(**dict(ridge_params, alpha=alpha))
    reg.fit(X, y, sample_weight=weights)
    assert len(reg.history_) == 1  # no epoch ran
    # Weights are rescaled to average 1, which Ridge's penalty sees too.
    ridge_weights = None if weights is None else weights / weights.mean()
    ridge = Ridge(alpha=alpha).fit(_embeddings(X), y, sample_weight=ridge_weights)
    np.testing.assert_allclose(reg.predict(X), ridge.predict(_embeddings(X)),
                               rtol=0, atol=1e-3 * y.std())


def test_brightness_is_learned(brightness_images, ridge_params, tiny_params):
    X, y = brightness_images
    assert PretrainedCNNRegressor(**ridge_params).fit(X, y).score(X, y) > 0.95
    mlp = PretrainedCNNRegressor(**ridge_params, hidden_layer_sizes=(8,))
    assert mlp.fit(X, y).score(X, y) > 0.8  # L-BFGS: no closed form
    assert mlp.history_[-1, "lbfgs_iterations"] > 1
    epochs = PretrainedCNNRegressor(**dict(tiny_params, max_epochs=40, lr=0.05))
    assert epochs.fit(X, y).score(X, y) > 0.8
    assert epochs.history_[-1, "train_loss"] < epochs.history_[0, "train_loss"]


def test_targets_are_standardised_inside(brightness_images, ridge_params):
    X, y = brightness_images
    reg = PretrainedCNNRegressor(**ridge_params).fit(X, y)
    np.testing.assert_allclose(reg.y_mean_, [y.mean()])
    np.testing.assert_allclose(reg.y_scale_, [y.std()])
    # The same model in other units: the scaling absorbs them.
    other = PretrainedCNNRegressor(**ridge_params).fit(X, 1000 * y - 7)
    np.testing.assert_allclose(other.predict(X), 1000 * reg.predict(X) - 7,
                               rtol=1e-5)


def test_prediction_shapes(brightness_images, ridge_params):
    X, y = brightness_images
    reg = PretrainedCNNRegressor(**ridge_params)
    assert reg.fit(X, y).predict(X).shape == (30,)
    assert reg.fit(X, y[:, None]).predict(X).shape == (30,)  # as MLPRegressor
    both = np.column_stack([y, 255 - y])
    predicted = reg.fit(X, both).predict(X)
    assert predicted.shape == (30, 2) and reg.n_outputs_ == 2
    np.testing.assert_allclose(predicted.sum(axis=1), 255, atol=1.0)
    assert reg.score(X, both) > 0.95
    assert reg.transform(X).shape == (30, reg.n_features_out_)
    assert reg.predict(X[:1]).dtype == np.float64


def test_huber_loss_resists_an_outlier(brightness_images, ridge_params):
    X, y = brightness_images
    spoiled = y.copy()
    spoiled[0] = 1e4
    rest = slice(1, None)
    errors = {}
    for loss in ("squared_error", "huber"):
        reg = PretrainedCNNRegressor(**ridge_params, loss=loss).fit(X, spoiled)
        errors[loss] = np.abs(reg.predict(X)[rest] - y[rest]).mean()
    assert errors["huber"] < 0.5 * errors["squared_error"]


def test_fine_tuning_with_early_stopping_and_tta(brightness_images, tiny_params):
    X, y = brightness_images
    reg = PretrainedCNNRegressor(
        **dict(tiny_params, unfreeze=1, max_epochs=3, early_stopping=True,
               validation_fraction=0.2, loss="huber")
    ).fit(X, y)
    assert reg.history_[-1, "valid_loss"] > 0
    plain = reg.predict(X)
    flipped = reg.set_params(tta="flip").predict(X)
    assert flipped.shape == plain.shape
    # Brightness does not change under a flip; nor, much, does the prediction.
    np.testing.assert_allclose(flipped, plain, atol=0.1 * y.std())


def test_warm_start_and_partial_fit_keep_the_scaling(brightness_images,
                                                    tiny_params):
    X, y = brightness_images
    reg = PretrainedCNNRegressor(**tiny_params)
    reg.partial_fit(X, y)
    mean = reg.y_mean_.copy()
    reg.partial_fit(X[:10], y[:10] + 100)
    np.testing.assert_array_equal(reg.y_mean_, mean)
    assert len(reg.history_) == 2
    with pytest.raises(ValueError, match="2 output"):
        reg.partial_fit(X, np.column_stack([y, y]))


@pytest.mark.parametrize("y, match", [
    (np.array(["bright", "dark"] * 15), "needs numeric targets"),
    (np.r_[np.nan, np.ones(29)], "NaN"),
    (np.ones(29), "inconsistent numbers of samples"),
])
def test_bad_targets_raise(brightness_images, tiny_params, y, match):
    X, _ = brightness_images
    with pytest.raises(ValueError, match=match):
        PretrainedCNNRegressor(**tiny_params).fit(X, y)


def test_bad_parameters_raise(brightness_images, tiny_params):
    X, y = brightness_images
    with pytest.raises(ValueError, match="'alpha' parameter"):
        PretrainedCNNRegressor(**tiny_params, alpha=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="'loss' parameter"):
        PretrainedCNNRegressor(**tiny_params, loss="absolute").fit(X, y)


@pytest.mark.parametrize("include_backbone", [True, False])
def test_save_load_and_pickle_round_trip(brightness_images, ridge_params, tmp_path,
                                         include_backbone):
    X, y = brightness_images
    reg = PretrainedCNNRegressor(**ridge_params, loss="huber").fit(
        X, np.column_stack([y, -y]))
    saved = reg.save(tmp_path / "model", include_backbone=include_backbone)
    for loaded in (PretrainedCNNRegressor.load(saved),
                   pickle.loads(pickle.dumps(reg))):
        assert isinstance(loaded.y_mean_, np.ndarray)
        np.testing.assert_array_equal(loaded.y_mean_, reg.y_mean_)
        np.testing.assert_array_equal(loaded.y_scale_, reg.y_scale_)
        assert loaded.get_params() == reg.get_params()
        np.testing.assert_array_equal(loaded.predict(X), reg.predict(X))


def test_a_saved_regressor_is_not_a_classifier(brightness_images, ridge_params,
                                               tmp_path):
    from sktransfer import ModelFileError, PretrainedCNNClassifier

    X, y = brightness_images
    saved = PretrainedCNNRegressor(**ridge_params).fit(X, y).save(tmp_path / "m")
    with pytest.raises(ModelFileError, match="holds a PretrainedCNNRegressor"):
        PretrainedCNNClassifier.load(saved)


def test_grid_search_over_unfreeze(brightness_images, ridge_params):
    X, y = brightness_images
    search = GridSearchCV(
        PretrainedCNNRegressor(**dict(ridge_params, max_epochs=2)),
        {"unfreeze": [0, 1]}, cv=KFold(2, shuffle=True, random_state=0),
    ).fit(X, y)
    assert search.best_params_["unfreeze"] in (0, 1)
    assert search.best_estimator_.score(X, y) > 0.5


def test_clone_and_unfitted(brightness_images, ridge_params):
    X, y = brightness_images
    reg = PretrainedCNNRegressor(**ridge_params)
    assert is_regressor(reg)
    with pytest.raises(NotFittedError):
        reg.predict(X)
    fresh = clone(reg.fit(X, y))
    assert fresh.get_params() == reg.get_params() and not hasattr(fresh, "model_")


@pytest.mark.parametrize("check", [
    ec.check_no_attributes_set_in_init,
    ec.check_parameters_default_constructible,
    ec.check_get_params_invariance,
    ec.check_set_params,
    ec.check_estimator_repr,
    ec.check_estimator_cloneable,
    ec.check_mixin_order,
    ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types,
    ec.check_do_not_raise_errors_in_init_or_set_params,
], ids=lambda c: c.__name__)
def test_data_free_check(check):
    check(NAME, PretrainedCNNRegressor())


def test_check_estimator_passes_what_it_yields():
    results = ec.check_estimator(PretrainedCNNRegressor(), on_fail=None)
    assert results
    assert [r["check_name"] for r in results if r["status"] != "passed"] == []
    tags = PretrainedCNNRegressor().__sklearn_tags__()
    assert tags.estimator_type == "regressor" and tags.target_tags.multi_output


@pytest.mark.parametrize("inputs", [{"augment": "light"}, {"cache": False}])
def test_targets_reach_training_without_the_cache(brightness_images, tiny_params,
                                                  inputs):
    X, y = brightness_images
    reg = PretrainedCNNRegressor(**dict(tiny_params, max_epochs=1), **inputs)
    reg.fit(X, np.column_stack([y, y]), sample_weight=np.ones(len(X)))
    assert reg.predict(X).shape == (30, 2)
