import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor
from sktransfer._cache import memory_store
from sktransfer._frozen import map_features


@pytest.fixture
def extractor_params():
    return dict(
        backbone="tiny_cnn", weights=None, random_state=0, device="cpu",
        num_workers=0, batch_size=8,
    )


def test_transform_returns_float32_embeddings(colour_images, extractor_params):
    paths, _ = colour_images
    ext = PretrainedFeatureExtractor(**extractor_params).fit(paths)
    out = ext.transform(paths)
    assert out.shape == (len(paths), 16)
    assert out.dtype == np.float32
    assert ext.n_features_out_ == 16
    assert ext.n_frozen_blocks_ == ext.backbone_n_blocks_ == 3
    assert not any(p.requires_grad for p in ext.frozen_.parameters())
    # fit does not change the parameters it was given
    assert ext.device == "cpu" and ext.get_params()["batch_size"] == 8


def test_pipeline_with_logistic_regression(colour_images, extractor_params):
    paths, labels = colour_images
    pipe = Pipeline([
        ("features", PretrainedFeatureExtractor(**extractor_params)),
        ("clf", LogisticRegression(max_iter=1000)),
    ])
    pipe.fit(paths, labels)
    assert pipe.score(paths, labels) >= 0.9
    assert set(pipe.predict(paths[:4])) <= {"red", "green"}


def test_knn_on_embeddings(three_class_images, extractor_params):
    paths, labels = three_class_images
    pipe = Pipeline([
        ("features", PretrainedFeatureExtractor(**extractor_params)),
        ("knn", KNeighborsClassifier(n_neighbors=3)),
    ])
    pipe.fit(paths[::2], labels[::2])
    assert pipe.score(paths[1::2], labels[1::2]) >= 0.8


def test_embeddings_equal_classifier_frozen_features(colour_images, tiny_params,
                                                     extractor_params):
    paths, labels = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, unfreeze=0, cache=False)
    clf.fit(paths, labels)
    with torch.inference_mode():
        frozen = map_features(
            clf._frozen_pass(clf.model_.frozen), paths, lambda rows: rows
        )
    expected = frozen.numpy()
    ext = PretrainedFeatureExtractor(**extractor_params, cache=False).fit(paths)
    np.testing.assert_allclose(ext.transform(paths), expected, rtol=1e-5, atol=1e-6)
    # Same setting, same cache key: the two estimators share cached features.
    assert ext._feature_cache_key() == clf._feature_cache_key()


def test_transform_uses_the_feature_cache(colour_images, extractor_params):
    paths, _ = colour_images
    ext = PretrainedFeatureExtractor(**extractor_params).fit(paths)
    first = ext.transform(paths)
    assert len(memory_store()) == len(paths)
    # A fresh estimator of the same setting reads every row from the cache.
    other = clone(ext).fit(paths)
    with torch.no_grad():
        for p in other.frozen_.parameters():
            p.zero_()  # would change the output if the backbone ran
    np.testing.assert_array_equal(other.transform(paths), first)


def test_feature_names_and_pandas_output(colour_images, extractor_params):
    pd = pytest.importorskip("pandas")
    paths, _ = colour_images
    ext = PretrainedFeatureExtractor(**extractor_params).fit(paths)
    names = ext.get_feature_names_out()
    assert list(names[:2]) == ["pretrainedfeatureextractor0",
                               "pretrainedfeatureextractor1"]
    assert len(names) == 16
    frame = ext.set_output(transform="pandas").transform(paths[:5])
    assert isinstance(frame, pd.DataFrame)
    assert frame.shape == (5, 16)
    assert list(frame.columns) == list(names)


def test_not_fitted_and_bad_params(colour_images, extractor_params):
    paths, _ = colour_images
    with pytest.raises(NotFittedError):
        PretrainedFeatureExtractor(**extractor_params).transform(paths)
    with pytest.raises(NotFittedError):
        PretrainedFeatureExtractor(**extractor_params).get_feature_names_out()
    bad = dict(extractor_params, batch_size=0)
    with pytest.raises(ValueError, match="'batch_size' parameter"):
        PretrainedFeatureExtractor(**bad).fit(paths)


def test_joblib_round_trip(colour_images, extractor_params, tmp_path):
    paths, _ = colour_images
    ext = PretrainedFeatureExtractor(**extractor_params, cache=False).fit(paths)
    before = ext.transform(paths)
    joblib.dump(ext, tmp_path / "ext.joblib")
    loaded = joblib.load(tmp_path / "ext.joblib")
    np.testing.assert_array_equal(loaded.transform(paths), before)
    # The stand-in built on load must not overwrite what the fit recorded.
    assert loaded.weights_id_ == ext.weights_id_
    assert loaded.preprocessing_ == ext.preprocessing_
