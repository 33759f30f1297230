"""dask_predict on a two-process LocalCluster equals the local methods."""

import numpy as np
import pytest

from sktransfer import (
    PretrainedCNNClassifier,
    PretrainedCNNRegressor,
    PretrainedFeatureExtractor,
    dask_predict,
)

distributed = pytest.importorskip("dask.distributed")
da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
pd = pytest.importorskip("pandas")

# resnet18, not tiny_cnn: the workers unpickle the model and only know the
# built-in backbones.
PARAMS = dict(backbone="resnet18", weights=None, image_size=32, max_epochs=1,
              batch_size=8, precision="fp32", device="cpu", random_state=0)


@pytest.fixture(scope="module")
def client(dask_client):
    return dask_client


@pytest.fixture(scope="module")
def fitted(colour_images):
    X, y = colour_images
    return PretrainedCNNClassifier(**PARAMS).fit(X, y)


@pytest.mark.slow
def test_classifier_methods_equal_local(client, fitted, colour_images):
    X, _ = colour_images
    paths = da.from_array(X, chunks=7)  # uneven last block
    predicted = dask_predict(fitted, paths).compute()
    np.testing.assert_array_equal(predicted, fitted.predict(X))
    proba = dask_predict(fitted, paths, "predict_proba")
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.compute(), fitted.predict_proba(X), atol=1e-6)
    features = dask_predict(fitted, paths, "transform").compute()
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, fitted.transform(X), atol=1e-5)


@pytest.mark.slow
def test_dataframe_column_and_other_estimators(client, fitted, colour_images):
    X, y = colour_images
    column = dd.from_pandas(pd.DataFrame({"path": X}), npartitions=3)["path"]
    np.testing.assert_array_equal(dask_predict(fitted, column).compute(),
                                  fitted.predict(X))
    values = np.arange(len(X), dtype=float)
    reg = PretrainedCNNRegressor(**PARAMS).fit(X, values)
    paths = da.from_array(X, chunks=10)
    np.testing.assert_allclose(dask_predict(reg, paths).compute(), reg.predict(X),
                               atol=1e-6)
    extractor = PretrainedFeatureExtractor(
        backbone="resnet18", weights=None, image_size=32, random_state=0,
        precision="fp32", device="cpu",
    ).fit(X)
    np.testing.assert_allclose(dask_predict(extractor, paths, "transform").compute(),
                               extractor.transform(X), atol=1e-5)


def test_bad_arguments_are_refused(fitted, colour_images):
    X, _ = colour_images
    with pytest.raises(TypeError, match="1-D dask array"):
        dask_predict(fitted, X)
    with pytest.raises(ValueError, match="method must be one of"):
        dask_predict(fitted, da.from_array(X, chunks=5), "score")
