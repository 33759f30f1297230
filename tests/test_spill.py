"""Memory-mapped frozen features: the same rows as in-memory ones."""

import numpy as np
import pytest
import torch
from skorch.dataset import Dataset as SkorchDataset

import sktransfer._spill as spill
from sktransfer._cache import DiskFeatureStore, memory_store
from sktransfer._data import tensor_dataset
from sktransfer._spill import (
    RowView,
    disk_tensor,
    is_disk_backed,
    spill_directory,
    take_rows,
)


@pytest.fixture
def features(tmp_path):
    values = torch.randn(50, 3, 2, 2)
    mapped = disk_tensor(values.shape, tmp_path)
    mapped[:] = values
    return values, mapped


def test_disk_tensor_is_zeroed_mapped_and_leaves_no_file(tmp_path):
    mapped = disk_tensor((4, 5), tmp_path)
    assert is_disk_backed(mapped) and not is_disk_backed(torch.zeros(4, 5))
    assert torch.equal(mapped, torch.zeros(4, 5))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_take_rows_compacts_in_place_as_indexing_would(features, monkeypatch, step):
    values, mapped = features
    row_bytes = mapped[:1].nbytes
    monkeypatch.setattr(spill, "_COMPACT_BYTES", step * row_bytes)
    keep = np.random.default_rng(0).random(len(values)) < 0.6
    keep[0] = False  # the first kept row moves
    kept = take_rows(mapped, keep)
    assert is_disk_backed(kept)
    assert torch.equal(kept, values[torch.from_numpy(keep)])


def test_take_rows_of_memory_and_of_all_rows(features):
    values, mapped = features
    assert take_rows(mapped, np.ones(len(values), bool)) is mapped
    keep = np.arange(len(values)) % 3 == 0
    assert torch.equal(take_rows(values, keep), values[torch.from_numpy(keep)])


def test_row_view_slices_the_selected_rows(features):
    values, mapped = features
    idx = np.array([7, 3, 3, 40, 0])
    view = RowView(mapped, idx)
    assert len(view) == 5
    assert torch.equal(view[1:4], values[[3, 3, 40]])
    assert torch.equal(view[2], values[[3]])


@pytest.mark.parametrize("weighted", [False, True])
def test_disk_backed_dataset_yields_the_in_memory_items(features, weighted):
    values, mapped = features
    targets = torch.arange(len(values)) % 4
    weights = torch.rand(len(values)) if weighted else None
    idx = np.array([9, 2, 30, 2, 17, 48])
    lazy = tensor_dataset(mapped, targets, weights, idx)
    eager = tensor_dataset(values, targets, weights, idx)
    assert isinstance(eager, SkorchDataset) and not isinstance(lazy, SkorchDataset)
    assert len(lazy) == len(eager)
    items = [3, 0, 5, 1]  # not in file order
    for got, want in zip(lazy.__getitems__(items), (eager[i] for i in items)):
        x_got, y_got = got
        x_want, y_want = want
        if weighted:
            assert torch.equal(x_got["X"], x_want["X"])
            assert x_got["sample_weight"] == x_want["sample_weight"]
        else:
            assert torch.equal(x_got, x_want)
        assert int(y_got) == int(y_want)
    assert torch.equal(lazy[2][0] if not weighted else lazy[2][0]["X"], values[30])


def test_spill_directory_is_beside_the_disk_cache(tmp_path, monkeypatch):
    location = tmp_path / "cache"
    directory = spill_directory([memory_store(), DiskFeatureStore(location)])
    assert directory == str(location) and location.is_dir()
    monkeypatch.setattr(spill.tempfile, "tempdir", str(tmp_path))
    assert spill_directory([memory_store()]) == str(tmp_path)


def test_spill_directory_without_a_usable_cache_location_is_the_temporary_one(
    tmp_path, monkeypatch
):
    (tmp_path / "a_file").write_text("not a directory")
    unusable = DiskFeatureStore(tmp_path / "a_file" / "cache")
    monkeypatch.setattr(spill.tempfile, "tempdir", str(tmp_path))
    assert spill_directory([memory_store(), unusable]) == str(tmp_path)
