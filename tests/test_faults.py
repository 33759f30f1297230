"""Faults during training: NaN losses, Ctrl-C, out-of-memory, parallel fits."""

import multiprocessing
import os

import numpy as np
import pytest
import torch
from conftest import make_colour_images  # noqa: F401  (registers tiny_cnn in workers)
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from skorch.callbacks import Callback

from sktransfer import NonFiniteLossError, PretrainedCNNClassifier, _runtime

FIT_LOG = []  # fits started in this process, shared by callback copies


class NaNHead(Callback):
    """Poison the head so the first loss is NaN."""

    def on_train_begin(self, net, **kwargs):
        with torch.no_grad():
            for name, param in net.module_.named_parameters():
                if name.endswith("head.0.weight"):
                    param.fill_(float("nan"))


class InterruptAt(Callback):
    """Press Ctrl-C at the start of epoch ``epoch``."""

    def __init__(self, epoch=2):
        self.epoch = epoch

    def on_train_begin(self, net, **kwargs):
        FIT_LOG.append("fit")

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


class OOMAbove(Callback):
    """Raise CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit):
        self.limit = limit

    def on_train_begin(self, net, **kwargs):
        FIT_LOG.append(net.batch_size)

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if training and len(batch[0]) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")


class RecordThreads(Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_begin(self, net, **kwargs):
        name = f"{os.getpid()}-{len(os.listdir(self.folder))}"
        path = os.path.join(self.folder, name)
        with open(path, "w") as f:
            f.write(str(torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _clear_log():
    FIT_LOG.clear()


def test_nan_loss_stops_training(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, net_params={"callbacks": [NaNHead()]})
    with pytest.raises(NonFiniteLossError, match=r"became nan in epoch 1, batch 1\. "
                                                 r"Lower `lr`"):
        clf.fit(X, y)


def test_huge_lr_stops_with_non_finite_loss(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**{**tiny_params, "lr": 1e38, "max_epochs": 20},
                                  optimizer="sgd", hidden_layer_sizes=(16,))
    with pytest.raises(NonFiniteLossError, match=r"in epoch \d+, batch \d+"):
        clf.fit(X, y)


def test_keyboard_interrupt_keeps_a_usable_model(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params,
                                  net_params={"callbacks": [InterruptAt(2)]})
    with pytest.warns(UserWarning, match="interrupted after 2 epoch"):
        with pytest.raises(KeyboardInterrupt):
            clf.fit(X, y)
    assert clf.interrupted_ is True
    assert len(clf.history_) == 2
    assert set(clf.predict(X)) <= set(clf.classes_)
    assert not clf.model_.training


@pytest.mark.parametrize("search", ["cross_val_score", "grid"])
def test_keyboard_interrupt_stops_the_whole_search(colour_images, tiny_params, search):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params,
                                  net_params={"callbacks": [InterruptAt(2)]})
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
        if search == "grid":
            GridSearchCV(clf, {"lr": [0.01, 0.05]}, cv=3).fit(X, y)
        else:
            cross_val_score(clf, X, y, cv=KFold(3, shuffle=True, random_state=0))
    assert FIT_LOG == ["fit"]  # no further fold or candidate started


def test_out_of_memory_halves_the_batch(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params,
                                  net_params={"callbacks": [OOMAbove(2)]})
    with pytest.warns(ResourceWarning, match="retrying with batch_size=4") as record:
        clf.fit(X, y)
    assert [str(w.message) for w in record][-1].endswith(
        "Pass a smaller batch_size to skip this search.")
    assert FIT_LOG == [8, 4, 2]
    assert clf.batch_size_ == 2 and clf.batch_size == 8
    # The retry starts from the same weights and seed as a direct fit at 2.
    direct = PretrainedCNNClassifier(**{**tiny_params, "batch_size": 2}).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), direct.predict_proba(X),
                               atol=1e-6)


def test_out_of_memory_at_batch_one_raises(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**{**tiny_params, "batch_size": 2},
                                  net_params={"callbacks": [OOMAbove(0)]})
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(ResourceWarning):
        clf.fit(X, y)
    assert FIT_LOG == [2, 1]


def test_thread_cap_in_a_worker(monkeypatch, colour_images, tiny_params):
    X, y = colour_images
    before = torch.get_num_threads()
    assert _runtime.limit_threads_in_worker() is None  # the main process
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(2)
    try:
        PretrainedCNNClassifier(**tiny_params).fit(X, y)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow  # two worker processes import torch: ~10 s each
def test_parallel_grid_search_limits_threads(colour_images, tiny_params, tmp_path):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**{**tiny_params, "max_epochs": 1},
                                  net_params={"callbacks": [RecordThreads(
                                      str(tmp_path))]})
    search = GridSearchCV(clf, {"lr": [0.01, 0.05]}, cv=2, n_jobs=2).fit(X, y)
    assert search.best_estimator_.predict(X[:2]).shape == (2,)
    records = os.listdir(tmp_path)
    workers = {name.split("-")[0] for name in records} - {str(os.getpid())}
    assert len(records) == 5 and workers  # 4 fits in workers + the refit here
    for name in records:
        if name.split("-")[0] in workers:
            threads = int((tmp_path / name).read_text())
            assert threads * 2 <= max(2, os.cpu_count())


def test_clone_of_interrupted_estimator_is_clean(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params,
                                  net_params={"callbacks": [InterruptAt(1)]})
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning):
        clf.fit(X, y)
    fresh = clone(clf)
    assert not hasattr(fresh, "interrupted_")
