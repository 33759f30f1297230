"""sktransfer.inspection: class-activation maps and top losses."""

import sys

import joblib
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from torch import nn

from sktransfer import (
    BackboneSpec,
    BadImagesError,
    PretrainedCNNClassifier,
    get_backbone,
    register_backbone,
)
from sktransfer._transforms import Preprocessing
from sktransfer.backbones import BackboneParts
from sktransfer.backbones._registry import set_feature_layout
from sktransfer.inspection import GradCAMDisplay, TopLossesDisplay
from sktransfer.inspection._cam import _as_grid

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Module-scoped fits run before conftest's per-test patch of the CPU's bf16
# support, so precision is fixed here.
FIT = dict(
    weights=None, max_epochs=3, lr=0.05, batch_size=8, random_state=0,
    device="cpu", num_workers=0, head_solver="epochs", precision="fp32",
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# -- tiny backbones with token and with non-spatial outputs -------------------


class _PatchTokens(nn.Module):
    """4x4 patches as 64 tokens, after a class token: (N, 1 + 64, C)."""

    def __init__(self, width=16):
        super().__init__()
        self.proj = nn.Conv2d(3, width, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))

    def forward(self, x):
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)


class _TokenMLP(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class _MeanTokens(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


_PREP = Preprocessing(resize_size=36, crop_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)


def _build_tokens(weights):
    blocks = [_PatchTokens(), _TokenMLP()]
    return BackboneParts(blocks, _MeanTokens(), 16, _PREP, "random")


def _build_pooled(weights):
    blocks = [
        nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)),
    ]
    return BackboneParts(blocks, nn.Identity(), 8, _PREP, "random")


class _Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


def _build_channels_last(weights):
    """tiny_cnn with every block's output (N, H, W, C), marked as such, as
    timm's Swin stages output them; the same weights for the same seed."""
    tiny = get_backbone("tiny_cnn").build(None)
    to_nhwc, to_nchw = _Permute(0, 2, 3, 1), _Permute(0, 3, 1, 2)
    blocks = [nn.Sequential(tiny.blocks[0], to_nhwc)] + [
        nn.Sequential(to_nchw, block, to_nhwc) for block in tiny.blocks[1:]
    ]
    for block in blocks:
        set_feature_layout(block, "NHWC")
    neck = nn.Sequential(to_nchw, tiny.neck)
    return BackboneParts(blocks, neck, 16, tiny.preprocessing, "random")


for _name, _build in [
    ("tiny_tokens", _build_tokens),
    ("tiny_pooled", _build_pooled),
    ("tiny_channels_last", _build_channels_last),
]:
    register_backbone(
        BackboneSpec(name=_name, family="test", build=_build, source="test"),
        overwrite=True,
    )


# -- data and fitted models ---------------------------------------------------


@pytest.fixture(scope="module")
def half_images(tmp_path_factory):
    """Red or green on the left half only; the right half is the same random
    noise for both classes, so only the left half tells them apart."""
    folder = tmp_path_factory.mktemp("half")
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for label, colour in [("red", (220, 30, 30)), ("green", (30, 220, 30))]:
        for i in range(12):
            arr = rng.integers(0, 256, (32, 32, 3))
            arr[:, :16] = np.clip(colour + rng.integers(-30, 30, (32, 16, 3)), 0, 255)
            path = folder / f"{label}_{i}.png"
            Image.fromarray(arr.astype(np.uint8)).save(path)
            paths.append(str(path))
            labels.append(label)
    return np.array(paths, dtype=object), np.array(labels)


@pytest.fixture(scope="module")
def half_clf(half_images):
    # unfreeze=1: the explained block learns. A frozen random block's features
    # of the noise half carry as much weight as any other and only cancel out
    # between the classes, so their maps would not single out the left half.
    return PretrainedCNNClassifier(
        "tiny_cnn", unfreeze=1, **{**FIT, "max_epochs": 5}
    ).fit(*half_images)


@pytest.fixture(scope="module")
def three_clf(three_class_images):
    return PretrainedCNNClassifier(
        "tiny_cnn", hidden_layer_sizes=(8,), **FIT
    ).fit(*three_class_images)


def _left_share(heatmaps):
    mass = heatmaps.sum(axis=(1, 2))
    assert (mass > 0).all()
    return heatmaps[:, :, :16].sum(axis=(1, 2)) / mass


# -- Grad-CAM -----------------------------------------------------------------


def test_gradcam_maps_concentrate_on_the_informative_half(half_clf, half_images):
    X, y = half_images
    display = GradCAMDisplay.from_estimator(half_clf, X, target=y)
    heatmaps = display.heatmaps
    assert heatmaps.shape == (len(X), 32, 32)
    assert heatmaps.min() >= 0 and np.allclose(heatmaps.max(axis=(1, 2)), 1)
    share = _left_share(heatmaps)
    # Half the mass would be chance; transposed or mirrored maps fail.
    assert share.mean() > 0.65 and share.min() > 0.55, share


def test_gradcam_on_vit_tokens(half_images):
    X, y = half_images
    clf = PretrainedCNNClassifier("tiny_tokens", unfreeze=1, **{**FIT, "max_epochs": 5})
    display = GradCAMDisplay.from_estimator(clf.fit(X, y), X, target=y)
    # 64 patch tokens after a class token, back on their 8 x 8 grid.
    assert display.heatmaps.shape == (len(X), 32, 32)
    share = _left_share(display.heatmaps)
    assert share.mean() > 0.75 and share.min() > 0.6, share


def test_gradcam_on_channels_last_maps(half_clf, half_images):
    # The same network as half_clf's with (N, H, W, C) outputs gives the same
    # maps; read as (N, C, H, W) they would not even have the right shape.
    X, y = half_images
    clf = PretrainedCNNClassifier(
        "tiny_channels_last", unfreeze=1, **{**FIT, "max_epochs": 5}
    ).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), half_clf.predict_proba(X),
                               atol=1e-5)
    for layer in (0, 1, None):
        np.testing.assert_allclose(
            GradCAMDisplay.from_estimator(clf, X, target=y, layer=layer).heatmaps,
            GradCAMDisplay.from_estimator(half_clf, X, target=y, layer=layer).heatmaps,
            atol=1e-4,
        )


def test_gradcam_on_a_timm_vit_uses_the_last_blocks_input(half_images):
    pytest.importorskip("timm")
    X, y = half_images
    # test_vit pools its class token only; 16 x 16 patches of 64 px images
    # give a 4 x 4 grid.
    clf = PretrainedCNNClassifier(
        "timm/test_vit", image_size=64, unfreeze=2, **{**FIT, "max_epochs": 5}
    ).fit(X, y)
    n_blocks = clf.backbone_n_blocks_
    default = GradCAMDisplay.from_estimator(clf, X, target=y).heatmaps
    before_last = GradCAMDisplay.from_estimator(
        clf, X, target=y, layer=n_blocks - 2
    ).heatmaps
    np.testing.assert_array_equal(default, before_last)
    assert default.shape == (len(X), 64, 64)
    assert np.allclose(default.max(axis=(1, 2)), 1)
    # After the last block only the class token reaches the pooled output,
    # so the patch tokens get no gradient and there is no map.
    last = GradCAMDisplay.from_estimator(clf, X, target=y, layer=-1).heatmaps
    assert not last.any()


@pytest.mark.parametrize("name", ["test_vit", "vit_small_patch14_reg4_dinov2"])
def test_vit_tokens_are_laid_out_as_timm_lays_them_out(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0).eval()
    torch.manual_seed(0)
    blocks = get_backbone(f"timm/{name}").build(None).blocks
    size = model.pretrained_cfg["input_size"][-1]
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = model.forward_intermediates(
            x, indices=[2], norm=False, output_fmt="NCHW", intermediates_only=True
        )[0]
        tokens = nn.Sequential(*blocks[:4]).eval()(x)  # embedding, blocks 0-2
    # Class and register tokens dropped, patches back on timm's own grid.
    torch.testing.assert_close(_as_grid(tokens, 3, "NCHW"), expected)


def test_gradcam_non_spatial_block_raises(colour_images):
    clf = PretrainedCNNClassifier("tiny_pooled", **{**FIT, "max_epochs": 1})
    clf.fit(*colour_images)
    with pytest.raises(ValueError, match=r"no spatial layout.*layer="):
        GradCAMDisplay.from_estimator(clf, colour_images[0][:2])
    display = GradCAMDisplay.from_estimator(clf, colour_images[0][:2], layer=0)
    assert display.heatmaps.shape == (2, 32, 32)


def test_gradcam_methods_agree_on_last_block_only(three_clf, three_class_images):
    X = three_class_images[0][:6]
    hires = GradCAMDisplay.from_estimator(three_clf, X).heatmaps
    grad = GradCAMDisplay.from_estimator(three_clf, X, method="gradcam").heatmaps
    # Global pooling follows the last block: the gradient is the same at
    # every position, so weighting by its mean changes nothing.
    np.testing.assert_allclose(hires, grad, atol=1e-5)
    early = GradCAMDisplay.from_estimator(three_clf, X, layer=0).heatmaps
    early_grad = GradCAMDisplay.from_estimator(
        three_clf, X, layer=0, method="gradcam"
    ).heatmaps
    assert np.abs(early - early_grad).max() > 0.05


def test_gradcam_default_layer_is_last_block(three_clf, three_class_images):
    X = three_class_images[0][:4]
    default = GradCAMDisplay.from_estimator(three_clf, X).heatmaps
    np.testing.assert_array_equal(
        default, GradCAMDisplay.from_estimator(three_clf, X, layer=2).heatmaps
    )
    np.testing.assert_array_equal(
        default, GradCAMDisplay.from_estimator(three_clf, X, layer=-1).heatmaps
    )
    with pytest.raises(ValueError, match="layer must be None .* from -3 to 2"):
        GradCAMDisplay.from_estimator(three_clf, X, layer=3)


def test_gradcam_leaves_model_untouched(three_clf, three_class_images):
    X = three_class_images[0]
    before = three_clf.predict_proba(X)
    display = GradCAMDisplay.from_estimator(three_clf, X, batch_size=7)
    assert all(p.grad is None for p in three_clf.model_.parameters())
    assert not three_clf.model_.training
    np.testing.assert_allclose(three_clf.predict_proba(X), before)
    # The titles' probabilities come from the same network.
    np.testing.assert_allclose(display.target_proba, before.max(axis=1), atol=1e-5)
    np.testing.assert_array_equal(display.predicted_labels, three_clf.predict(X))


def test_gradcam_targets(three_clf, three_class_images):
    X = three_class_images[0][:5]
    predicted = GradCAMDisplay.from_estimator(three_clf, X)
    np.testing.assert_array_equal(predicted.target_labels, three_clf.predict(X))
    explicit = GradCAMDisplay.from_estimator(three_clf, X, target=three_clf.predict(X))
    np.testing.assert_array_equal(predicted.heatmaps, explicit.heatmaps)
    blue = GradCAMDisplay.from_estimator(three_clf, X, target="blue")
    assert (blue.target_labels == "blue").all()
    proba = three_clf.predict_proba(X)[:, list(three_clf.classes_).index("blue")]
    np.testing.assert_allclose(blue.target_proba, proba, atol=1e-5)
    with pytest.raises(ValueError, match=r"target contains labels \['purple'\]"):
        GradCAMDisplay.from_estimator(three_clf, X, target="purple")
    with pytest.raises(ValueError, match="target has 2 labels for 5 images"):
        GradCAMDisplay.from_estimator(three_clf, X, target=["red", "blue"])


def test_integer_labels(colour_images):
    X, y = colour_images
    y_int = (y == "green").astype(int) * 3 + 1  # labels 1 and 4
    clf = PretrainedCNNClassifier("tiny_cnn", **{**FIT, "max_epochs": 2})
    clf.fit(X, y_int)
    display = GradCAMDisplay.from_estimator(clf, X[:3], target=4)
    assert display.target_labels.tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="target contains labels"):
        GradCAMDisplay.from_estimator(clf, X[:3], target="4")
    top = TopLossesDisplay.from_estimator(clf, X, y_int, k=4)
    assert set(top.y_true.tolist()) <= {1, 4}
    assert set(top.y_pred.tolist()) <= {1, 4}


# -- top losses ---------------------------------------------------------------


def test_top_losses_are_sorted_cross_entropies(three_clf, three_class_images):
    X, y = three_class_images
    display = TopLossesDisplay.from_estimator(three_clf, X, y, k=7)
    proba = three_clf.predict_proba(X)
    true = np.searchsorted(three_clf.classes_, y)
    losses = -np.log(proba[np.arange(len(y)), true])
    assert len(display.indices) == 7
    assert (np.diff(display.losses) <= 0).all()
    np.testing.assert_array_equal(display.losses, losses[display.indices])
    # No image outside the top k has a higher loss.
    assert losses.max() == display.losses[0]
    assert np.delete(losses, display.indices).max() <= display.losses[-1]
    np.testing.assert_array_equal(display.y_true, y[display.indices])
    np.testing.assert_array_equal(
        display.y_pred, three_clf.predict(X)[display.indices]
    )
    np.testing.assert_allclose(display.proba_true, np.exp(-display.losses))
    assert display.images.shape == (7, 32, 32, 3)
    assert display.images.dtype == np.uint8


def test_top_losses_k_and_labels(three_clf, three_class_images):
    X, y = three_class_images
    display = TopLossesDisplay.from_estimator(three_clf, X[:4], y[:4], k=20)
    assert sorted(display.indices.tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        TopLossesDisplay.from_estimator(three_clf, X, y, k=0)
    with pytest.raises(ValueError, match=r"y contains labels \['pink'\]"):
        TopLossesDisplay.from_estimator(three_clf, X[:2], ["red", "pink"])


# -- fitted state, persistence ------------------------------------------------


@pytest.mark.parametrize("display_cls", [GradCAMDisplay, TopLossesDisplay])
def test_unfitted_or_wrong_estimator_raises(display_cls, colour_images, tiny_params):
    X, y = colour_images
    args = (X,) if display_cls is GradCAMDisplay else (X, y)
    with pytest.raises(NotFittedError):
        display_cls.from_estimator(PretrainedCNNClassifier(**tiny_params), *args)
    with pytest.raises(TypeError, match="needs a fitted"):
        display_cls.from_estimator(LogisticRegression(), *args)


def test_displays_after_save_load_and_joblib(three_clf, three_class_images, tmp_path):
    X, y = three_class_images
    cam = GradCAMDisplay.from_estimator(three_clf, X[:4]).heatmaps
    top = TopLossesDisplay.from_estimator(three_clf, X, y, k=3)
    three_clf.save(tmp_path / "model")
    joblib.dump(three_clf, tmp_path / "model.joblib")
    for loaded in [PretrainedCNNClassifier.load(tmp_path / "model"),
                   joblib.load(tmp_path / "model.joblib")]:
        np.testing.assert_allclose(
            GradCAMDisplay.from_estimator(loaded, X[:4]).heatmaps, cam, atol=1e-6
        )
        again = TopLossesDisplay.from_estimator(loaded, X, y, k=3)
        np.testing.assert_array_equal(again.indices, top.indices)
        np.testing.assert_allclose(again.losses, top.losses)


# -- drawing ------------------------------------------------------------------


def test_plot_on_given_axes(three_clf, three_class_images):
    X, y = three_class_images
    fig, ax = plt.subplots()
    display = GradCAMDisplay.from_estimator(three_clf, X[:3], ax=ax, n_cols=2)
    assert display.figure_ is fig and display.axes_.shape == (2, 2)
    assert not display.axes_[1, 1].axison  # the fourth panel is unused
    assert len(display.axes_[0, 0].images) == 2  # image and map
    fig, axes = plt.subplots(1, 4)
    top = TopLossesDisplay.from_estimator(three_clf, X, y, k=4, ax=axes)
    assert top.figure_ is fig
    title = top.axes_[0].get_title()
    assert f"{top.y_pred[0]} / {top.y_true[0]}" in title
    assert f"{top.losses[0]:.2f} / {top.proba_pred[0]:.2f}" in title
    with pytest.raises(ValueError, match="ax holds 4 Axes but TopLossesDisplay"):
        TopLossesDisplay.from_estimator(three_clf, X, y, k=5, ax=axes)
    with pytest.raises(ValueError, match="alpha must be a float from 0 to 1"):
        display.plot(alpha=2)
    with pytest.raises(ValueError, match="n_cols must be an int >= 1"):
        display.plot(n_cols=0)
    default = display.plot()
    assert default.axes_.shape == (2, 2) and default.figure_ is not fig


@pytest.mark.parametrize("display_cls", [GradCAMDisplay, TopLossesDisplay])
def test_missing_matplotlib_names_the_extra(display_cls, monkeypatch, tiny_params):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    args = ([] if display_cls is GradCAMDisplay else [["a"]])
    # Before anything else: the estimator is not even fitted.
    with pytest.raises(ImportError, match=r"sktransfer\[plot\]"):
        display_cls.from_estimator(
            PretrainedCNNClassifier(**tiny_params), ["a.png"], *args
        )


def test_bad_image_files_are_listed(three_clf, three_class_images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    X = [three_class_images[0][0], str(broken)]
    with pytest.raises(BadImagesError, match="broken.png"):
        GradCAMDisplay.from_estimator(three_clf, X)
