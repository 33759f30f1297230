"""The feature cache gives the same models as no cache, and is really used."""

import errno
import os
import shutil
import stat
import tempfile
import warnings

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score

import sktransfer._frozen as _frozen
import sktransfer._trained as classifier_module
from sktransfer import PretrainedCNNClassifier, clear_feature_cache
from sktransfer._cache import DiskFeatureStore, memory_store
from sktransfer._spill import disk_tensor, is_disk_backed


class FrozenCounter:
    """Counts images passing through the frozen part of every model built."""

    def __init__(self):
        self.n_images = 0

    def build(self, original):
        def build_and_hook(*args, **kwargs):
            module = original(*args, **kwargs)
            module.frozen.register_forward_hook(self._hook)
            return module

        return build_and_hook

    def _hook(self, module, inputs, output):
        self.n_images += inputs[0].shape[0]

    def take(self):
        n, self.n_images = self.n_images, 0
        return n


@pytest.fixture
def frozen_calls(monkeypatch):
    counter = FrozenCounter()
    monkeypatch.setattr(
        classifier_module,
        "build_transfer_module",
        counter.build(classifier_module.build_transfer_module),
    )
    return counter


@pytest.fixture
def own_images(tmp_path, colour_images):
    """A private copy of the colour images, safe to modify."""
    X, y = colour_images
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for p in X:
        paths.append(str(folder / os.path.basename(p)))
        shutil.copy2(p, paths[-1])
    return np.array(paths, dtype=object), y


# -- same results with and without the cache --------------------------------


@pytest.mark.parametrize("unfreeze", [0, 1])
@pytest.mark.parametrize(
    "backbone, image_size", [("tiny_cnn", None), ("resnet18", 32)]
)
def test_cached_fit_equals_uncached_fit(
    colour_images, tiny_params, backbone, image_size, unfreeze, cpu_native_bf16
):
    X, y = colour_images
    params = dict(tiny_params, backbone=backbone, image_size=image_size,
                  unfreeze=unfreeze, lr=0.01)
    cached = PretrainedCNNClassifier(**params).fit(X, y)
    uncached = PretrainedCNNClassifier(**params, cache=False).fit(X, y)
    np.testing.assert_allclose(
        cached.predict_proba(X), uncached.predict_proba(X), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        cached.history_[:, "train_loss"], uncached.history_[:, "train_loss"],
        rtol=1e-5,
    )


# -- the cache is hit --------------------------------------------------------


def test_second_fit_and_new_head_run_no_frozen_pass(
    colour_images, tiny_params, frozen_calls
):
    X, y = colour_images
    PretrainedCNNClassifier(**tiny_params).fit(X, y)
    assert frozen_calls.take() == len(X)  # once per image, not per epoch
    clf = PretrainedCNNClassifier(**dict(tiny_params, lr=0.01), hidden_layer_sizes=(8,))
    clf.fit(X, y)
    clf.predict(X)
    assert frozen_calls.take() == 0


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_uncached_fit_runs_frozen_part_every_epoch(
    colour_images, tiny_params, frozen_calls, unfreeze
):
    X, y = colour_images
    PretrainedCNNClassifier(**tiny_params, unfreeze=unfreeze).fit(X, y)
    frozen_calls.take()
    PretrainedCNNClassifier(**tiny_params, unfreeze=unfreeze, cache=False).fit(X, y)
    assert frozen_calls.take() == len(X) * tiny_params["max_epochs"]


def test_cross_validation_and_search_share_features(
    colour_images, tiny_params, frozen_calls
):
    X, y = colour_images
    cv = KFold(4, shuffle=True, random_state=0)
    clf = PretrainedCNNClassifier(**tiny_params)
    scores = cross_val_score(clf, X, y, cv=cv)
    assert len(scores) == 4
    # Every image goes through the frozen part once over all folds.
    assert frozen_calls.take() == len(X)
    search = GridSearchCV(clf, {"lr": [0.01, 0.05], "hidden_layer_sizes": [(), (4,)]},
                          cv=cv)
    search.fit(X, y)
    search.predict(X)
    assert frozen_calls.take() == 0


@pytest.mark.parametrize("as_memory", [False, True])
def test_disk_cache_is_reused_after_memory_is_cleared(
    colour_images, tiny_params, frozen_calls, tmp_path, as_memory
):
    X, y = colour_images
    cache = joblib.Memory(tmp_path, verbose=0) if as_memory else tmp_path
    first = PretrainedCNNClassifier(**tiny_params, cache=cache).fit(X, y)
    assert frozen_calls.take() == len(X)
    n_files = len(list(DiskFeatureStore(tmp_path).directory.rglob("*.feat")))
    assert n_files == len(X)

    clear_feature_cache()
    assert len(memory_store()) == 0
    second = PretrainedCNNClassifier(**tiny_params, cache=cache).fit(X, y)
    assert frozen_calls.take() == 0
    np.testing.assert_allclose(first.predict_proba(X), second.predict_proba(X))
    # Disk hits were copied into memory: the next lookup needs no disk.
    assert len(memory_store()) == len(X)


@pytest.mark.parametrize("change", ["content", "mtime"])
def test_touched_image_invalidates_only_its_entry(
    own_images, tiny_params, frozen_calls, change
):
    X, y = own_images
    PretrainedCNNClassifier(**tiny_params).fit(X, y)
    frozen_calls.take()
    st = os.stat(X[3])
    if change == "content":
        arr = np.asarray(Image.open(X[3])).copy()
        arr[:5] = 0
        Image.fromarray(arr).save(X[3])
        os.utime(X[3], ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    else:
        os.utime(X[3], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    PretrainedCNNClassifier(**tiny_params).fit(X, y)
    assert frozen_calls.take() == 1


def _weights_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    return str(path)


@pytest.mark.parametrize(
    "changed",
    [{"image_size": 40}, {"unfreeze": 1}, {"random_state": 1}, {"weights": "file"}],
)
def test_changed_frozen_setting_does_not_reuse_entries(
    colour_images, tiny_params, frozen_calls, tmp_path, changed
):
    X, y = colour_images
    params = dict(tiny_params, backbone="resnet18", image_size=32)
    PretrainedCNNClassifier(**params).fit(X, y)
    frozen_calls.take()
    if changed.get("weights") == "file":
        changed = {"weights": _weights_file(tmp_path)}
    PretrainedCNNClassifier(**dict(params, **changed)).fit(X, y)
    assert frozen_calls.take() == len(X)


def test_augment_never_trains_on_cached_features(
    colour_images, tiny_params, frozen_calls
):
    X, y = colour_images
    PretrainedCNNClassifier(**tiny_params).fit(X, y)  # warms the cache
    frozen_calls.take()
    PretrainedCNNClassifier(**tiny_params, augment=True).fit(X, y)
    assert frozen_calls.take() == len(X) * tiny_params["max_epochs"]


def test_unseeded_random_backbone_is_never_cached(
    colour_images, tiny_params, frozen_calls, tmp_path
):
    X, y = colour_images
    params = dict(tiny_params, random_state=None, cache=tmp_path)
    for _ in range(2):
        PretrainedCNNClassifier(**params).fit(X, y)
        assert frozen_calls.take() == len(X)
    assert len(memory_store()) == 0
    assert not DiskFeatureStore(tmp_path).directory.exists()


# -- the memory bound ----------------------------------------------------------


def test_memory_bound_spills_the_features_to_a_memory_mapped_file(
    colour_images, tiny_params, frozen_calls, cpu_native_bf16, tmp_path, monkeypatch
):
    X, y = colour_images
    params = dict(tiny_params, unfreeze=1)
    cached = PretrainedCNNClassifier(**params).fit(X, y)
    clear_feature_cache()
    frozen_calls.take()
    spill_dir = tmp_path / "tmp"
    spill_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    mapped = []
    monkeypatch.setattr(
        _frozen, "disk_tensor",
        lambda *args, **kw: mapped.append(disk_tensor(*args, **kw)) or mapped[-1],
    )
    # tiny_cnn, unfreeze=1: 16x8x8 floats = 4 KiB per image, 96 KiB for 24
    # in fp32, half that in bf16: both beyond the bound.
    bounded = PretrainedCNNClassifier(**params, cache_max_gb=30 / 1024**2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bounded.fit(X, y)
    assert [tuple(t.shape) for t in mapped] == [(len(X), 16, 8, 8)]
    assert is_disk_backed(mapped[0])
    # Memory was not to hold them: the process-wide memory store has no copy.
    assert len(memory_store()) == 0
    # The frozen part ran once over the images, not every epoch.
    assert frozen_calls.take() == len(X)
    assert list(spill_dir.iterdir()) == []  # the file has no name left
    np.testing.assert_allclose(
        cached.predict_proba(X), bounded.predict_proba(X), rtol=1e-5, atol=1e-6
    )


def test_spilled_features_go_to_the_disk_cache_but_not_to_memory(
    colour_images, tiny_params, frozen_calls, tmp_path
):
    X, y = colour_images
    params = dict(tiny_params, unfreeze=1, cache=str(tmp_path),
                  cache_max_gb=30 / 1024**2)
    PretrainedCNNClassifier(**params).fit(X, y)
    assert frozen_calls.take() == len(X)
    assert len(memory_store()) == 0
    assert len(list(DiskFeatureStore(tmp_path).directory.rglob("*.feat"))) == len(X)
    # A second fit reads them from the disk, still not copying them to memory.
    PretrainedCNNClassifier(**params).fit(X, y)
    assert frozen_calls.take() == 0
    assert len(memory_store()) == 0


def test_memory_bound_without_disk_room_falls_back_to_uncached_training(
    colour_images, tiny_params, frozen_calls, cpu_native_bf16, monkeypatch
):
    X, y = colour_images
    params = dict(tiny_params, unfreeze=1)
    cached = PretrainedCNNClassifier(**params).fit(X, y)
    clear_feature_cache()
    frozen_calls.take()
    monkeypatch.setattr(_frozen, "free_disk_bytes", lambda directory: 1000)
    bounded = PretrainedCNNClassifier(**params, cache_max_gb=30 / 1024**2)
    size = "48 KiB" if cpu_native_bf16 else "96 KiB"  # bf16 rows are half
    with pytest.warns(
        UserWarning, match=size + r".*1e\+03 B free in .*raise cache_max_gb"
    ) as record:
        bounded.fit(X, y)
    assert record[0].filename == __file__
    # The first batch was run to measure a row, then every epoch.
    n_batch = 2 * tiny_params["batch_size"]
    assert frozen_calls.take() == n_batch + len(X) * tiny_params["max_epochs"]
    np.testing.assert_allclose(
        cached.predict_proba(X), bounded.predict_proba(X), rtol=1e-5, atol=1e-6
    )


def test_cache_max_gb_is_validated(colour_images, tiny_params):
    X, y = colour_images
    with pytest.raises(ValueError, match="'cache_max_gb' parameter"):
        PretrainedCNNClassifier(**tiny_params, cache_max_gb=0).fit(X, y)


# -- the key follows the fitted frozen part, not the parameters ----------------


def _register(name, build):
    from sktransfer import BackboneSpec, register_backbone

    register_backbone(
        BackboneSpec(name=name, family="test", build=build, n_blocks=3, source="test"),
        overwrite=True,
    )


def test_same_frozen_part_under_another_name_shares_entries(
    colour_images, tiny_params, frozen_calls
):
    from conftest import _build_tiny

    _register("tiny_cnn_alias", _build_tiny)
    X, y = colour_images
    PretrainedCNNClassifier(**tiny_params).fit(X, y)
    assert frozen_calls.take() == len(X)
    PretrainedCNNClassifier(**dict(tiny_params, backbone="tiny_cnn_alias")).fit(X, y)
    assert frozen_calls.take() == 0


def test_reregistered_architecture_does_not_hit_old_entries(
    colour_images, tiny_params, frozen_calls, tmp_path
):
    from conftest import _build_tiny, _conv_block

    from sktransfer.backbones import BackboneParts

    def wider(weights):
        parts = _build_tiny(weights)
        blocks = [_conv_block(3, 8), _conv_block(8, 16), _conv_block(16, 24)]
        return BackboneParts(blocks, parts.neck, 24, parts.preprocessing, "random")

    X, y = colour_images
    params = dict(tiny_params, backbone="tiny_swapped", cache=tmp_path)
    _register("tiny_swapped", _build_tiny)
    PretrainedCNNClassifier(**params).fit(X, y)
    frozen_calls.take()
    _register("tiny_swapped", wider)
    clear_feature_cache()  # the disk entries must not be served either
    clf = PretrainedCNNClassifier(**params).fit(X, y)
    assert frozen_calls.take() == len(X)
    assert clf.predict_proba(X).shape == (len(X), 2)


# -- a cache directory that cannot be written ----------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_unwritable_cache_directory_warns_once(
    colour_images, tiny_params, tmp_path, monkeypatch, code
):
    from sktransfer import _cache

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(_cache.tempfile, "mkstemp", refuse)
    X, y = colour_images
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clf = PretrainedCNNClassifier(**tiny_params, cache=tmp_path).fit(X, y)
    ours = [w for w in record if "Cannot write the feature cache" in str(w.message)]
    assert len(ours) == 1
    assert ours[0].category is UserWarning
    assert ours[0].filename == __file__
    assert clf.predict(X).shape == (len(X),)
    assert len(memory_store()) == len(X)  # the memory store still works


def test_read_only_cache_directory_warns_once(colour_images, tiny_params, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    X, y = colour_images
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.warns(UserWarning, match="Cannot write the feature cache") as rec:
            PretrainedCNNClassifier(**tiny_params, cache=tmp_path).fit(X, y)
    finally:
        os.chmod(tmp_path, 0o700)
    assert len([w for w in rec if "feature cache" in str(w.message)]) == 1


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_disk_entries_follow_the_umask(colour_images, tiny_params, tmp_path, umask):
    X, y = colour_images
    old = os.umask(umask)
    try:
        some = [0, 1, -2, -1]
        PretrainedCNNClassifier(**tiny_params, cache=tmp_path).fit(X[some], y[some])
    finally:
        os.umask(old)
    files = list(DiskFeatureStore(tmp_path).directory.rglob("*.feat"))
    assert files
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in files} == {0o666 & ~umask}


def test_cache_true_is_the_memory_cache(colour_images, tiny_params, frozen_calls):
    X, y = colour_images
    PretrainedCNNClassifier(**tiny_params, cache=True).fit(X, y)
    assert frozen_calls.take() == len(X)
    assert len(memory_store()) == len(X)
    PretrainedCNNClassifier(**dict(tiny_params, lr=0.01), cache=True).fit(X, y)
    assert frozen_calls.take() == 0
