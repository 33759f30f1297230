"""sktransfer.inspection on a CUDA GPU; skipped where there is none."""

import joblib
import matplotlib
import numpy as np
import pytest
import torch

from sktransfer import PretrainedCNNClassifier
from sktransfer.inspection import GradCAMDisplay, TopLossesDisplay

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"
)


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_displays_on_the_gpu(three_class_images, tiny_params, unfreeze, tmp_path):
    X, y = three_class_images
    # precision="auto": the frozen blocks run in bf16 or fp16, as in predict.
    clf = PretrainedCNNClassifier(**dict(tiny_params, device="cuda",
                                         unfreeze=unfreeze)).fit(X, y)
    cam = GradCAMDisplay.from_estimator(clf, X)
    assert cam.heatmaps.shape == (len(X), 32, 32)
    assert np.isfinite(cam.heatmaps).all()
    assert cam.heatmaps.min() >= 0 and cam.heatmaps.max() <= 1
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(cam.target_proba, proba.max(axis=1), atol=2e-2)
    top = TopLossesDisplay.from_estimator(clf, X, y, k=5)
    true = np.searchsorted(clf.classes_, y)
    losses = -np.log(proba[np.arange(len(y)), true])
    np.testing.assert_array_equal(top.losses, losses[top.indices])
    assert (np.diff(top.losses) <= 0).all()

    joblib.dump(clf, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    assert torch.device(loaded.device_).type == "cuda"
    np.testing.assert_allclose(
        GradCAMDisplay.from_estimator(loaded, X).heatmaps, cam.heatmaps, atol=1e-4
    )
    plt.close("all")


def test_vit_gradcam_on_the_gpu(three_class_images, tiny_params):
    pytest.importorskip("timm")
    X, y = three_class_images
    params = dict(tiny_params, backbone="timm/test_vit", image_size=64,
                  device="cuda", unfreeze=2)
    clf = PretrainedCNNClassifier(**params).fit(X, y)
    cam = GradCAMDisplay.from_estimator(clf, X)
    assert cam.heatmaps.shape == (len(X), 64, 64)
    assert np.isfinite(cam.heatmaps).all() and cam.heatmaps.max() == 1
    np.testing.assert_allclose(
        cam.target_proba, clf.predict_proba(X).max(axis=1), atol=2e-2
    )
    plt.close("all")
