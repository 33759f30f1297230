"""Frozen features kept in the precision the frozen pass runs in."""

import numpy as np
import pytest
import torch

from sktransfer import PretrainedCNNClassifier
from sktransfer._cache import DiskFeatureStore
from sktransfer._frozen import extract_features
from sktransfer._spill import disk_tensor, is_disk_backed


def _fitted(tiny_params, X, y, **params):
    return PretrainedCNNClassifier(**dict(tiny_params, **params)).fit(X, y)


def test_stored_dtype_follows_the_precision(colour_images, tiny_params,
                                            cpu_native_bf16):
    X, y = colour_images
    clf = _fitted(tiny_params, X, y, precision="auto")
    features, _ = extract_features(clf._frozen_pass(clf.model_.frozen), X)
    expected = torch.bfloat16 if cpu_native_bf16 else torch.float32
    assert features.dtype == expected


def test_bf16_features_take_half_the_memory(colour_images, tiny_params):
    X, y = colour_images
    sizes = {}
    for precision in ("fp32", "bf16"):
        clf = _fitted(tiny_params, X, y, precision=precision, unfreeze=1)
        features, _ = extract_features(clf._frozen_pass(clf.model_.frozen), X)
        sizes[precision] = features.nbytes
    assert sizes["bf16"] * 2 == sizes["fp32"]


def test_spilled_bf16_tensor_holds_rows(tmp_path):
    tensor = disk_tensor((4, 3), tmp_path, dtype=torch.bfloat16)
    tensor[2] = torch.tensor([1.5, -2.0, 3.0])
    assert is_disk_backed(tensor) and tensor.dtype == torch.bfloat16
    assert tensor[2].float().tolist() == [1.5, -2.0, 3.0]
    assert tensor[0].abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_disk_store_keeps_the_dtype_and_refuses_another(tmp_path, dtype):
    store = DiskFeatureStore(tmp_path)
    row = torch.randn(5, 2).to(dtype)
    store.put("model", "image", row)
    found = store.get("model", "image", expected_dtype=dtype)
    assert found.dtype == dtype and torch.equal(found, row)
    other = torch.float32 if dtype != torch.float32 else torch.bfloat16
    assert store.get("model", "image", expected_dtype=other) is None


def test_bf16_stored_predictions_agree_with_fp32(three_class_images, tiny_params):
    X, y = three_class_images
    fp32 = _fitted(tiny_params, X, y, precision="fp32")
    bf16 = _fitted(tiny_params, X, y, precision="bf16")
    agreement = np.mean(fp32.predict(X) == bf16.predict(X))
    assert agreement >= 0.99
