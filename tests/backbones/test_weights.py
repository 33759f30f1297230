"""Loading torchvision weights offline: local files, the torch hub cache, and
refusing files that carry code. No test touches the network."""

import os
import pickle
from urllib.error import URLError

import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from sktransfer import get_backbone

CHECKPOINT = os.path.basename(ResNet18_Weights.DEFAULT.url)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Any attempt to download fails as it would on a machine without network."""

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME; torch.hub.get_dir() reads the variable each call."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert torch.hub.get_dir() == str(home / "hub")
    return home


@pytest.fixture
def random_resnet18_state():
    return resnet18(weights=None).state_dict()


def _resnet18_parts_state(parts):
    """The built backbone's tensors under torchvision's resnet18 names."""
    stem, *layers = parts.blocks
    state = {f"conv1.{k}": v for k, v in stem[0].state_dict().items()}
    state.update({f"bn1.{k}": v for k, v in stem[1].state_dict().items()})
    for i, layer in enumerate(layers, start=1):
        state.update({f"layer{i}.{k}": v for k, v in layer.state_dict().items()})
    return state


def _assert_backbone_equals(parts, expected):
    loaded = _resnet18_parts_state(parts)
    backbone_keys = [k for k in expected if not k.startswith("fc.")]
    assert sorted(loaded) == sorted(backbone_keys)
    for key in backbone_keys:
        assert torch.equal(loaded[key], expected[key]), key


def test_local_state_dict_file(tmp_path, random_resnet18_state):
    path = tmp_path / "my_resnet18.pth"
    torch.save(random_resnet18_state, path)
    parts = get_backbone("resnet18").build(str(path))
    _assert_backbone_equals(parts, random_resnet18_state)
    assert parts.weights_id.startswith("file:sha256:")


def test_default_weights_from_torch_home_without_network(
    torch_home, random_resnet18_state
):
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(random_resnet18_state, checkpoints / CHECKPOINT)
    parts = get_backbone("resnet18").build("DEFAULT")
    _assert_backbone_equals(parts, random_resnet18_state)
    assert parts.weights_id == "torchvision:ResNet18_Weights.IMAGENET1K_V1"


def test_missing_weights_offline_say_where_to_put_them(torch_home):
    with pytest.raises(RuntimeError) as info:
        get_backbone("resnet18").build("DEFAULT")
    message = str(info.value)
    assert CHECKPOINT in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "TORCH_HOME" in message
    assert "weights='/path/to/state_dict.pth'" in message
    assert isinstance(info.value.__cause__, URLError)


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("save", [torch.save, "pickle"])
def test_malicious_weights_file_is_refused(tmp_path, save):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    state = {"conv1.weight": _Payload(marker)}
    if save == "pickle":
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=2)
    else:
        save(state, path)
    with pytest.raises(ValueError, match=r"(?s)evil\.pth.*Only tensors are accepted"):
        get_backbone("resnet18").build(str(path))
    assert not marker.exists()


def test_malicious_file_in_torch_hub_cache_is_refused(torch_home, tmp_path):
    marker = tmp_path / "payload_ran"
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"conv1.weight": _Payload(marker)}, checkpoints / CHECKPOINT)
    with pytest.raises(RuntimeError, match=CHECKPOINT):
        get_backbone("resnet18").build("DEFAULT")
    assert not marker.exists()


def test_unknown_weights_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_backbone("resnet50").build("IMAGENET1K_V9")
    message = str(info.value)
    assert "'IMAGENET1K_V9'" in message
    for valid in ("DEFAULT", "IMAGENET1K_V1", "IMAGENET1K_V2"):
        assert message.count(f"'{valid}'") == 1


def test_enum_qualified_name_is_accepted(torch_home, random_resnet18_state):
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(random_resnet18_state, checkpoints / CHECKPOINT)
    parts = get_backbone("resnet18").build("ResNet18_Weights.IMAGENET1K_V1")
    _assert_backbone_equals(parts, random_resnet18_state)


def test_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="other.pth.*does not match"):
        get_backbone("resnet18").build(str(path))


def test_weights_file_is_hashed_again_only_when_it_changes(tmp_path, monkeypatch):
    import sktransfer.backbones._weights as weights_module

    calls = []
    real = weights_module.file_sha256

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(weights_module, "file_sha256", counting)
    path = tmp_path / "w.pth"
    path.write_bytes(b"first")
    first = weights_module.weights_file_id(path)
    assert weights_module.weights_file_id(path) == first
    assert len(calls) == 1  # the second fit reuses the hash
    path.write_bytes(b"second, longer")
    second = weights_module.weights_file_id(path)
    assert second != first and len(calls) == 2
    assert second == f"file:sha256:{real(path)}"
