"""channels="grey": one luminance channel into an adapted pretrained stem."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor
from sktransfer._channels import adapt_stem_to_grey, grey_preprocessing
from sktransfer._transforms import Preprocessing, eval_transform
from sktransfer.backbones import get_backbone

FAMILIES = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vgg11",
            "densenet121", "convnext_tiny", "regnet_y_400mf"]


def _first_conv(module):
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", FAMILIES)
def test_adapted_stem_equals_rgb_stem_inside_the_border(name):
    parts = get_backbone(name).build(None)
    stem = parts.blocks[0]
    rgb_prep = parts.preprocessing
    conv = _first_conv(stem)
    rgb_conv = nn.Conv2d(3, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, conv.dilation, conv.groups,
                         bias=conv.bias is not None)
    rgb_conv.load_state_dict(conv.state_dict())

    # The adapted conv must be the one that sees the network's input.
    seen = {}
    handle = conv.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    grey_prep = adapt_stem_to_grey(stem, rgb_prep, name)
    x = torch.randn(1, 1, 48, 48)
    with torch.no_grad():
        stem.eval()(x)
    handle.remove()
    assert seen["x"] is x
    assert conv.in_channels == 1 and conv.weight.shape[1] == 1
    assert grey_prep.channels == 1

    g = torch.rand(2, 1, 48, 48)
    mean, std = torch.tensor(rgb_prep.mean), torch.tensor(rgb_prep.std)
    rgb_in = (g.expand(-1, 3, -1, -1) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    grey_in = (g - grey_prep.mean[0]) / grey_prep.std[0]
    with torch.no_grad():
        expected, got = rgb_conv(rgb_in), conv(grey_in)
    # Outputs whose receptive field lies inside the image are exact.
    border = -(-conv.padding[0] // conv.stride[0]) if conv.padding[0] else 0
    inner = (slice(None), slice(None), slice(border, -border or None),
             slice(border, -border or None))
    torch.testing.assert_close(got[inner], expected[inner], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, expected, atol=1e-4) or border == 0


def test_a_stem_without_an_rgb_convolution_is_refused():
    prep = Preprocessing(36, 32, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(ValueError, match="channels='rgb'"):
        adapt_stem_to_grey(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), prep,
                           "'mlp'")


def test_rgb_preprocessing_keeps_its_old_dictionary():
    prep = Preprocessing(36, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    assert "channels" not in prep.to_dict()  # old cache keys stay valid
    grey = grey_preprocessing(prep)
    assert grey.to_dict()["channels"] == 1
    assert grey.mean == pytest.approx((0.4,)) and grey.std == pytest.approx((0.25,))
    assert Preprocessing.from_dict(grey.to_dict()) == grey
    assert Preprocessing.from_dict(prep.to_dict()) == prep


def test_grey_transform_gives_one_channel_of_luminance():
    prep = grey_preprocessing(Preprocessing(36, 32, (0.5,) * 3, (0.25,) * 3))
    image = Image.fromarray(np.full((40, 40, 3), (200, 100, 50), np.uint8))
    out = eval_transform(prep)(image)
    assert out.shape == (1, 32, 32)
    luminance = Image.fromarray(np.full((40, 40, 3), (200, 100, 50),
                                        np.uint8)).convert("L").getpixel((0, 0))
    torch.testing.assert_close(out, torch.full_like(out, (luminance / 255 - 0.5)
                                                    / 0.25))


@pytest.mark.parametrize("augment", [False, "classic", "trivialaugment"])
def test_grey_classifier_fits_saves_and_loads(colour_images, tiny_params, tmp_path,
                                              augment):
    X, y = colour_images
    clf = PretrainedCNNClassifier(
        **tiny_params, unfreeze=1, channels="grey", augment=augment, tta="flip",
    ).fit(X, y)
    assert clf.preprocessing_.channels == 1
    assert clf.model_.frozen[0][0].weight.shape[1] == 1
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    clf.save(tmp_path / "grey")
    loaded = PretrainedCNNClassifier.load(tmp_path / "grey")
    np.testing.assert_allclose(loaded.predict_proba(X), proba, atol=1e-6)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(clf)).predict_proba(X),
                               proba, atol=1e-6)


def test_grey_and_rgb_do_not_share_cached_features(colour_images, tmp_path):
    X, _ = colour_images
    params = dict(backbone="tiny_cnn", weights=None, random_state=0,
                  device="cpu", num_workers=0, cache=tmp_path)
    rgb = PretrainedFeatureExtractor(**params).fit(X)
    grey = PretrainedFeatureExtractor(**params, channels="grey").fit(X)
    assert rgb._feature_cache_key() != grey._feature_cache_key()
    assert not np.allclose(rgb.transform(X), grey.transform(X))


def test_an_rgb_model_from_before_channels_existed_loads_as_rgb(colour_images,
                                                                tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    state = clf.__getstate__()
    state.pop("channels")  # as pickled before the parameter existed
    old = PretrainedCNNClassifier.__new__(PretrainedCNNClassifier)
    old.__setstate__(state)
    np.testing.assert_allclose(old.predict_proba(X), clf.predict_proba(X), atol=1e-6)
