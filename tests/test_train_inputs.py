"""Augmented training: images decoded once, policies on training rows only."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import sktransfer._data as data_module
from sktransfer import PretrainedCNNClassifier
from sktransfer._decoded import DecodedImages
from sktransfer._train_inputs import TrainingImages
from sktransfer._transforms import Preprocessing

PREP = Preprocessing(36, 32, (0.5,) * 3, (0.25,) * 3)


@pytest.fixture
def file_reads(monkeypatch):
    """Counts every image file the library reads."""
    reads = []
    original = data_module.ImageDataset._load

    def counting(self, i):
        reads.append(self.paths[i])
        return original(self, i)

    monkeypatch.setattr(data_module.ImageDataset, "_load", counting)
    return reads


def _training_images(colour_images, augment, decoded=True):
    paths, _ = colour_images
    store = DecodedImages.decode(paths, PREP) if decoded else None
    return TrainingImages(paths, PREP, augment, store)


@pytest.mark.parametrize("decoded", [True, False], ids=["in-memory", "files"])
def test_policy_applies_to_training_rows_only(colour_images, decoded):
    images = _training_images(colour_images, "classic", decoded)
    targets = torch.zeros(len(images.paths), dtype=torch.int64)
    train, valid = images.datasets(np.arange(0, 20), np.arange(20, 24), targets, None)
    assert len(train) == 20 and len(valid) == 4
    torch.manual_seed(0)
    first = torch.stack([train[i][0] for i in range(len(train))])
    second = torch.stack([train[i][0] for i in range(len(train))])
    assert first.shape == (20, 3, 32, 32)
    assert not torch.equal(first, second)  # a new random view each epoch
    assert torch.equal(valid[0][0], valid[0][0])  # validation: deterministic


def test_in_memory_and_file_training_inputs_agree_without_randomness(colour_images):
    """Both sources feed the network the same tensors for the same policy."""
    keep_still = v2.Lambda(lambda image: image)
    in_memory = _training_images(colour_images, keep_still, decoded=True)
    files = _training_images(colour_images, keep_still, decoded=False)
    targets = torch.arange(len(in_memory.paths))
    idx = np.arange(len(in_memory.paths))
    a, _ = in_memory.datasets(idx, None, targets, None)
    b, _ = files.datasets(idx, None, targets, None)
    for i in (0, 7, 23):
        assert torch.equal(a[i][0], b[i][0])
        assert a[i][1] == b[i][1] == i


def test_sample_weights_follow_their_rows(colour_images):
    images = _training_images(colour_images, True)
    n = len(images.paths)
    weights = torch.arange(n, dtype=torch.float32)
    targets = torch.arange(n)
    train, valid = images.datasets(np.array([3, 5]), np.array([9]), targets, weights)
    (x, y), (v, vy) = train[1], valid[0]
    assert y == 5 and x["sample_weight"] == 5.0
    assert vy == 9 and v["sample_weight"] == 9.0


def test_take_renumbers_rows_and_refuses_bad_ones(colour_images, tmp_path):
    paths, _ = colour_images
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    mixed = np.array([paths[0], str(broken), paths[1]], dtype=object)
    decoded = DecodedImages.decode(mixed, PREP)
    assert [i for i, _ in decoded.errors] == [1]
    kept = decoded.take(np.array([True, False, True]))
    expected = DecodedImages.decode(mixed[[0, 2]], PREP)
    assert torch.equal(kept.images, expected.images) and kept.errors == []
    assert decoded.take(np.ones(3, bool)) is decoded
    with pytest.raises(ValueError, match="Row 1 could not be decoded"):
        decoded.take(np.array([False, True, True]))


@pytest.mark.parametrize("augment", [True, "light", "classic", "trivialaugment"])
def test_augmented_fit_reads_each_file_once(
    colour_images, tiny_params, file_reads, augment
):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, augment=augment, unfreeze=1)
    clf.fit(X, y)
    assert len(clf.history_) == tiny_params["max_epochs"]
    assert sorted(file_reads) == sorted(X)  # decoded once, not once per epoch


def test_store_over_the_memory_bound_reads_files_every_epoch(
    colour_images, tiny_params, file_reads
):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, augment=True, cache_max_gb=1e-9)
    with pytest.warns(UserWarning, match="reads the image files every epoch"):
        clf.fit(X, y)
    # One scan for bad files, then one read per image and epoch.
    assert len(file_reads) == len(X) * (1 + tiny_params["max_epochs"])


def test_callable_policy_sees_stored_uint8_squares(colour_images, tiny_params):
    seen = []

    def policy(image):
        seen.append((image.dtype, tuple(image.shape)))
        return v2.functional.horizontal_flip(image)

    X, y = colour_images
    PretrainedCNNClassifier(**tiny_params, augment=policy).fit(X, y)
    assert seen and set(seen) == {(torch.uint8, (3, 36, 36))}
    assert len(seen) == len(X) * tiny_params["max_epochs"]


def test_bad_files_are_skipped_with_their_labels(colour_images, tiny_params, tmp_path):
    X, y = colour_images
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    X_bad = np.append(X, str(broken)).astype(object)
    y_bad = np.append(y, "blue")  # a class seen only on the bad file
    clf = PretrainedCNNClassifier(**tiny_params, augment=True, on_bad_image="skip")
    with pytest.warns(UserWarning, match="broken.png"):
        clf.fit(X_bad, y_bad)
    assert clf.skipped_images_[0][0] == str(broken)
    assert clf.n_train_images_ == len(X)
    assert clf.classes_.tolist() == ["green", "red"]


def test_augmented_fit_is_repeatable(colour_images, tiny_params):
    X, y = colour_images
    fits = [
        PretrainedCNNClassifier(**tiny_params, augment="classic").fit(X, y)
        for _ in range(2)
    ]
    a, b = (f.predict_proba(X) for f in fits)
    np.testing.assert_array_equal(a, b)


def test_stored_centre_view_is_the_evaluation_transform_of_the_file(tmp_path):
    """The stored centre view is the evaluation transform of the file."""
    path = tmp_path / "wide.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(path)
    images = TrainingImages(np.array([str(path)], dtype=object), PREP, False,
                            DecodedImages.decode([str(path)], PREP))
    files = TrainingImages(np.array([str(path)], dtype=object), PREP, False)
    targets = torch.zeros(1, dtype=torch.int64)
    a, _ = images.datasets(np.array([0]), None, targets, None)
    b, _ = files.datasets(np.array([0]), None, targets, None)
    assert (a[0][0] - b[0][0]).abs().max() < 1e-5


def test_torchvision_transform_as_augment_clones_and_searches(
    colour_images, tiny_params
):
    """torchvision transforms' static get_params is not mistaken for sklearn's."""
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    rotate = v2.RandomRotation(10)
    clf = PretrainedCNNClassifier(**tiny_params, augment=rotate)
    assert clf.get_params()["augment"] is rotate
    copied = clone(clf)
    assert isinstance(copied.augment, v2.RandomRotation)
    assert copied.augment is not rotate
    assert copied.augment.degrees == rotate.degrees
    X, y = colour_images
    # Grid values are cloned by scikit-learn itself, which calls get_params
    # on them: a transform with a static get_params goes in a v2.Compose.
    grid = {"augment": [False, v2.Compose([rotate]), v2.RandomHorizontalFlip()]}
    search = GridSearchCV(clf, grid, cv=2).fit(X, y)
    assert len(search.cv_results_["params"]) == 3


def test_augmented_model_predicts_on_the_evaluation_view(colour_images, tiny_params):
    """The policy is for training only: prediction is deterministic and uses
    the same view as a model fitted without augmentation."""
    from sktransfer._frozen import map_features

    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, augment="classic", unfreeze=1)
    clf.fit(X, y)
    first = clf.predict_proba(X)
    np.testing.assert_array_equal(first, clf.predict_proba(X))
    frozen_pass = clf._frozen_pass(clf.model_.frozen)
    with torch.no_grad():
        logits = map_features(frozen_pass, X, lambda f: clf.model_.suffix(f))
    np.testing.assert_allclose(first, torch.softmax(logits.double(), 1), atol=1e-6)


# -- augment_views: random views through the frozen part once per fit ----------


@pytest.fixture
def frozen_images(monkeypatch):
    """Counts images passing through the frozen part of every model built."""
    import sktransfer._trained as classifier_module

    seen = []
    original = classifier_module.build_transfer_module

    def build_and_count(*args, **kwargs):
        module = original(*args, **kwargs)
        module.frozen.register_forward_hook(
            lambda m, inputs, out: seen.append(inputs[0].shape[0])
        )
        return module

    monkeypatch.setattr(classifier_module, "build_transfer_module", build_and_count)
    return seen


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_augment_views_run_the_frozen_part_once_per_view(
    colour_images, tiny_params, frozen_images, unfreeze
):
    X, y = colour_images
    params = dict(tiny_params, augment=True, unfreeze=unfreeze, max_epochs=4)
    PretrainedCNNClassifier(**params, augment_views=2).fit(X, y)
    assert sum(frozen_images) == len(X) * (1 + 2)  # centre view + 2 random
    frozen_images.clear()
    PretrainedCNNClassifier(**params).fit(X, y)
    assert sum(frozen_images) == len(X) * 4  # every epoch


def test_augment_views_train_on_random_precomputed_rows(colour_images):
    images = _training_images(colour_images, True)
    n = len(images.paths)
    views = torch.arange(3 * n, dtype=torch.float32).reshape(3, n, 1)
    images.views, images.centre = views, torch.full((n, 1), -1.0)
    targets = torch.arange(n)
    train, valid = images.datasets(np.arange(n - 4), np.arange(n - 4, n),
                                   targets, None)
    torch.manual_seed(0)
    rows = [train[i] for i in range(len(train))] * 20
    picked = {int(x) // n for x, _ in rows}
    assert picked == {0, 1, 2}  # every view is drawn
    assert all(int(x) % n == int(t) for x, t in rows)  # of the right image
    assert all(float(valid[i][0]) == -1.0 for i in range(len(valid)))  # centre


def test_augment_views_over_the_memory_bound_fall_back(colour_images, tiny_params,
                                                       frozen_images):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, augment=True, augment_views=2,
                                  unfreeze=1)
    # Room for the decoded images (24 x 3 x 36 x 36 bytes), not for the
    # feature maps of 3 views (3 x 24 x 16 x 8 x 8 floats).
    clf.set_params(cache_max_gb=100_000 / 1024**3)
    with pytest.warns(UserWarning, match="augment_views=2 is ignored"):
        clf.fit(X, y)
    assert len(clf.history_) == tiny_params["max_epochs"]
    # One batch of views before the bound was known, then every epoch.
    assert sum(frozen_images[1:]) == len(X) * tiny_params["max_epochs"]


def test_augment_views_fit_is_repeatable_and_probes_the_clean_view(
    colour_images, tiny_params
):
    X, y = colour_images
    params = dict(tiny_params, augment="classic", augment_views=2, unfreeze=1,
                  head_solver="lbfgs")
    a, b = (PretrainedCNNClassifier(**params).fit(X, y) for _ in range(2))
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
