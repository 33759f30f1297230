"""Frozen features kept in the precision the frozen pass runs in."""

import numpy as np
import pytest
import torch

from sktransfer import (
    PretrainedCNNClassifier,
    PretrainedFeatureExtractor,
    _frozen,
    clear_feature_cache,
)
from sktransfer._cache import DiskFeatureStore
from sktransfer._frozen import extract_features
from sktransfer._sources import as_image_sources
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
def test_disk_store_keeps_the_dtype(tmp_path, dtype):
    store = DiskFeatureStore(tmp_path)
    row = torch.randn(5, 2).to(dtype)
    store.put("model", "image", row)
    found = store.get("model", "image")
    assert found.dtype == dtype and torch.equal(found, row)


def test_cached_entries_of_another_dtype_are_recomputed(colour_images, tmp_path,
                                                        monkeypatch):
    X, _ = colour_images
    extractor = PretrainedFeatureExtractor(
        backbone="tiny_cnn", weights=None, random_state=0, device="cpu",
        num_workers=0, precision="fp32", cache=tmp_path,
    ).fit(X)
    expected = extractor.transform(X)
    # Entries under the same key and fingerprints, written in bf16 by
    # something else: every one must be a miss for this float32 pass.
    key = extractor._feature_cache_key()
    store = DiskFeatureStore(tmp_path)
    for fp, row in zip(as_image_sources(X).fingerprints(), expected):
        store.put(key, fp, torch.from_numpy(row).to(torch.bfloat16))
    clear_feature_cache()
    computed = []
    run = _frozen._run_frozen

    def counting(*args, **kwargs):
        for batch in run(*args, **kwargs):
            computed.extend(batch[0])
            yield batch

    monkeypatch.setattr(_frozen, "_run_frozen", counting)
    np.testing.assert_array_equal(extractor.transform(X), expected)
    assert sorted(computed) == list(range(len(X)))


def test_bf16_stored_predictions_agree_with_fp32(three_class_images, tiny_params):
    X, y = three_class_images
    fp32 = _fitted(tiny_params, X, y, precision="fp32")
    bf16 = _fitted(tiny_params, X, y, precision="bf16")
    agreement = np.mean(fp32.predict(X) == bf16.predict(X))
    assert agreement >= 0.99
