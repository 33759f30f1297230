"""What a fit reads from, and leaves in, the machine it runs on.

GPU-only behaviour is tested by simulating the capability: a fake set of
CUDA devices (count, compute capability, the current device) stands in for
``torch.cuda``, so every branch runs on a CPU-only machine. Real-GPU
counterparts are in ``test_cuda.py``.
"""

import multiprocessing
import pickle
import shutil
import sys
import types
import uuid

import numpy as np
import pytest
import torch
from conftest import _build_tiny
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from skorch.callbacks import Callback
from torch import nn

from sktransfer import (
    BackboneSpec,
    PretrainedCNNClassifier,
    _frozen,
    _runtime,
    _training,
    register_backbone,
)
from sktransfer._base import TransferEstimatorBase
from sktransfer.backbones import BackboneParts

# -- a simulated machine with several GPUs -----------------------------------------


class FakeGPUs:
    """``n`` CUDA devices of the given compute capabilities, none real.

    Records ``(what, index)`` for each call that targets a device, and keeps
    the current device as ``torch.cuda.device(i)`` blocks set it.
    """

    def __init__(self, monkeypatch, capabilities):
        self.capabilities = capabilities
        self.current = 0
        self.calls = []
        gpus = self

        class device:  # noqa: N801 - stands in for torch.cuda.device
            def __init__(self, index):
                self.index = torch.device("cuda", index).index

            def __enter__(self):
                gpus.calls.append(("device", self.index))
                self.previous, gpus.current = gpus.current, self.index

            def __exit__(self, *exc):
                gpus.current = self.previous

        def capability(device=None):
            index = gpus.index_of(device)
            gpus.calls.append(("capability", index))
            return self.capabilities[index]

        def no_emulation_check(*args, **kwargs):
            raise AssertionError("is_bf16_supported() counts emulation and "
                                 "asks the current device")

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: gpus.current)
        monkeypatch.setattr(torch.cuda, "device", device)
        monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_emulation_check)

    def index_of(self, device):
        if device is None:
            return self.current
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return self.current if device.index is None else device.index

    def indices(self):
        return {index for _, index in self.calls}


@pytest.fixture
def two_gpus(monkeypatch):
    """GPU 0 a Turing (no native bf16), GPU 1 an Ampere."""
    return FakeGPUs(monkeypatch, [(7, 5), (8, 0)])


# -- 1. precision="auto" asks the estimator's own GPU --------------------------------


@pytest.mark.parametrize("device, expected", [
    ("cuda:0", torch.float16), ("cuda:1", torch.bfloat16),
])
def test_auto_precision_follows_the_capability_of_the_estimators_gpu(
    two_gpus, device, expected
):
    # The other GPU is the current one: its capability must not be used.
    two_gpus.current = 1 - torch.device(device).index
    clf = PretrainedCNNClassifier(device=device, precision="auto")
    clf._setup_runtime()
    assert clf.frozen_dtype_ == expected
    # Training runs in the same precision; fp16 is loss-scaled (TransferNet).
    assert clf._training_autocast_dtype() == expected
    assert two_gpus.indices() == {torch.device(device).index}


def test_auto_precision_on_the_current_gpu_for_a_bare_cuda(two_gpus):
    two_gpus.current = 1
    assert _runtime.resolve_precision("auto", "cuda") == torch.bfloat16
    two_gpus.current = 0
    assert _runtime.resolve_precision("auto", "cuda") == torch.float16


# -- 2. nothing lands on GPU 0 for a fit on cuda:N -----------------------------------


def test_frozen_pass_pins_its_batches_for_its_own_gpu(two_gpus, monkeypatch):
    seen = []

    class RecordingLoader:
        def __init__(self, dataset, **kwargs):
            self.pin_memory = kwargs["pin_memory"]

        def __iter__(self):
            # DataLoader pins for the device current when iteration starts.
            seen.append((self.pin_memory, two_gpus.current))
            return iter(())

    monkeypatch.setattr(_frozen, "DataLoader", RecordingLoader)
    batches = _frozen._run_frozen(
        nn.Identity(), [None], [0], batch_size=1, device="cuda:1", dtype=None,
        num_workers=0, progress=None,
    )
    assert list(batches) == []
    assert seen == [(True, 1)]
    assert two_gpus.current == 0  # restored
    assert two_gpus.indices() == {1}


def test_training_runs_with_its_own_gpu_current(two_gpus, monkeypatch):
    seen = []

    def run_fit(net, X, y=None):
        seen.append(two_gpus.current)  # GradScaler, pinning, empty_cache
        return False

    monkeypatch.setattr(_training, "run_fit", run_fit)
    plan = _training.TrainingPlan(
        module=nn.Linear(4, 2), criterion=nn.CrossEntropyLoss, criterion_params={},
            net_class=_training.TransferNet, classes=np.arange(2), lr=0.1, lr_scales={},
        optimizer=torch.optim.SGD, max_epochs=1, batch_size=4, device="cuda:1",
    )
    _training.fit_with_oom_backoff(plan, None, seed=None)
    assert seen == [1]
    assert two_gpus.current == 0
    assert two_gpus.indices() == {1}


def test_device_scope_only_for_an_indexed_cuda_device(two_gpus):
    for device in ["cpu", "cuda"]:
        with _runtime.device_scope(device):
            assert two_gpus.current == 0
    with _runtime.device_scope("cuda:1"):
        assert two_gpus.current == 1
    assert two_gpus.current == 0


# -- 3. a Dask worker's own GPU ------------------------------------------------------


@pytest.fixture
def dask_worker(monkeypatch):
    """Run as inside the Dask worker named 1 (a fake ``distributed``)."""
    fake = types.ModuleType("distributed")
    fake.get_worker = lambda: types.SimpleNamespace(name=1)
    monkeypatch.setitem(sys.modules, "distributed", fake)
    return fake


def test_dask_cuda_worker_uses_its_own_gpu(monkeypatch, dask_worker):
    FakeGPUs(monkeypatch, [(8, 0)] * 4)
    # dask-cuda's LocalCUDACluster: worker 1 sees "1,2,3,0", its GPU first.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2,3,0")
    assert _runtime.resolve_device("auto") == "cuda:0"
    # One GPU per worker, set by hand or by a job scheduler.
    FakeGPUs(monkeypatch, [(8, 0)])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert _runtime.resolve_device("auto") == "cuda:0"


def test_dask_workers_spread_over_gpus_without_visible_devices_set(
    monkeypatch, dask_worker
):
    FakeGPUs(monkeypatch, [(8, 0)] * 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _runtime.resolve_device("auto") == "cuda:1"
    monkeypatch.setitem(sys.modules, "distributed", types.ModuleType("gone"))
    assert _runtime.resolve_device("auto") == "cuda"  # not in a worker


# -- 4. no DataLoader workers inside daemonic processes ------------------------------


def _fit_in_daemonic_worker(X, y):
    """Fit three ways with the default num_workers; runs in a pool worker."""
    import conftest  # noqa: F401 - registers tiny_cnn in this process

    assert multiprocessing.current_process().daemon
    params = dict(backbone="tiny_cnn", weights=None, max_epochs=1, batch_size=4,
                  random_state=0, device="cpu", head_solver="epochs")
    assert params.get("num_workers") is None
    predictions = []
    # Cached features (the frozen pass's loader), images decoded once for
    # augmentation, and the training loader of skorch (cache=False).
    for extra in [{}, {"augment": True}, {"cache": False, "unfreeze": 1}]:
        clf = PretrainedCNNClassifier(**params, **extra).fit(X, y)
        predictions.append(clf.predict(X))
    return predictions


def test_fit_in_a_daemonic_pool_worker_with_default_num_workers(colour_images):
    X, y = colour_images
    # 24 images, batches of 4 and 8: outside a daemon, the defaults would
    # start loader workers.
    assert _runtime.default_num_workers(len(X), 8) > 0
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        predictions = pool.apply(_fit_in_daemonic_worker, (X, y))
    assert [len(p) for p in predictions] == [len(X)] * 3


def test_no_loader_workers_in_a_daemonic_process(monkeypatch):
    process = multiprocessing.current_process()
    assert _runtime.loader_workers(2, 10, 1) == 2
    monkeypatch.setattr(process, "daemon", True, raising=False)
    monkeypatch.setattr(multiprocessing, "current_process", lambda: process)
    assert _runtime.default_num_workers(1000, 8) == 0
    assert _runtime.loader_workers(None, 1000, 8) == 0
    assert _runtime.loader_workers(3, 1000, 8) == 0  # asked for, impossible here
    plan = _training.TrainingPlan(
        module=nn.Linear(4, 2), criterion=nn.CrossEntropyLoss, criterion_params={},
            net_class=_training.TransferNet, classes=np.arange(2), lr=0.1, lr_scales={},
        optimizer=torch.optim.SGD, max_epochs=1, batch_size=4, device="cpu",
        num_workers=2, net_params={"iterator_valid__num_workers": 2},
    )
    net = _training.build_net(plan)
    assert net.iterator_train__num_workers == 0
    assert net.iterator_valid__num_workers == 0
    # DataLoader refuses persistent workers without workers.
    assert not hasattr(net, "iterator_train__persistent_workers")


# -- 5. a fit changes no process-wide setting ----------------------------------------


SEEN_SETTINGS = []


def _settings():
    return (
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )


class _SettingsProbe(nn.Module):
    """Identity that records the process settings whenever it runs."""

    def forward(self, x):
        SEEN_SETTINGS.append(("forward", _settings()))
        return x


class _RecordSettings(Callback):
    def on_batch_begin(self, net, **kwargs):
        SEEN_SETTINGS.append(("training step", _settings()))


def _build_probed(weights):
    parts = _build_tiny(weights)
    blocks = [nn.Sequential(_SettingsProbe(), parts.blocks[0]), *parts.blocks[1:]]
    return BackboneParts(blocks, parts.neck, parts.feature_dim,
                         parts.preprocessing, parts.weights_id)


register_backbone(
    BackboneSpec(name="tiny_settings_probe", family="test", build=_build_probed,
                 n_blocks=3, source="test"),
    overwrite=True,
)


@pytest.fixture
def several_threads():
    """Two torch threads, so that a fit's switch to one would show."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("extra", [
    {},  # cached pooled features: the small-head fit
    {"unfreeze": 1, "cache": False},
], ids=["cached-head", "unfrozen"])
def test_fit_leaves_process_settings_alone(colour_images, tiny_params,
                                           several_threads, extra):
    X, y = colour_images
    SEEN_SETTINGS.clear()
    before = _settings()
    clf = PretrainedCNNClassifier(
        **dict(tiny_params, backbone="tiny_settings_probe", **extra),
        net_params={"callbacks": [_RecordSettings()]},
    ).fit(X, y)
    clf.predict(X)
    assert {kind for kind, _ in SEEN_SETTINGS} == {"forward", "training step"}
    assert {settings for _, settings in SEEN_SETTINGS} == {before}
    assert _settings() == before


@pytest.mark.parametrize("extra", [
    {}, {"unfreeze": "all", "cache": False}, {"augment": True, "unfreeze": 1},
], ids=["head", "fine-tune", "augment"])
def test_fit_under_deterministic_algorithms(colour_images, tiny_params, extra):
    X, y = colour_images
    torch.use_deterministic_algorithms(True)
    try:
        # An op torch knows to be nondeterministic would raise here.
        clf = PretrainedCNNClassifier(**tiny_params, **extra).fit(X, y)
        clf.predict_proba(X)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


# -- 6. compile=True keeps compiling through a search --------------------------------


class _CountingBackend:
    """A TorchDynamo backend that counts compilations and runs of graphs
    holding a linear layer (the head; not the loss, were it compiled)."""

    def __init__(self):
        self.compiles = 0
        self.runs = 0

    def __call__(self, graph_module, example_inputs):
        if not any("linear" in str(node.target) for node in graph_module.graph.nodes):
            return graph_module.forward
        self.compiles += 1

        def run(*args):
            self.runs += 1
            return graph_module.forward(*args)

        return run

    def __deepcopy__(self, memo):  # clones of estimators count here too
        return self


def test_compile_keeps_compiling_across_many_architectures(colour_images,
                                                           tiny_params):
    X, y = colour_images
    backend = _CountingBackend()
    widths = [(), (3,), (4,), (5,), (6,), (7,), (8,), (9,), (10,), (4, 4), (5, 5)]
    for width in widths:
        runs = backend.runs
        PretrainedCNNClassifier(
            **dict(tiny_params, max_epochs=1), hidden_layer_sizes=width,
            compile=True, net_params={"compile__backend": backend},
        ).fit(X, y)
        # Every training step ran compiled code, in the last fit as in the
        # first (TorchDynamo falls back to eager past its recompile limit).
        assert backend.runs - runs == 3, width  # 24 images in batches of 8
    # A fit of an architecture compiled before (a CV fold) reuses its graph.
    compiles = backend.compiles
    PretrainedCNNClassifier(
        **dict(tiny_params, max_epochs=1), hidden_layer_sizes=widths[3],
        compile=True, net_params={"compile__backend": backend},
    ).fit(X, y)
    assert backend.compiles == compiles


EAGER_TRAINING_CALLS = []


class _EagerTrainingProbe(nn.Module):
    """Identity that counts training-mode calls its Python code answers
    outside TorchDynamo's tracing, i.e. eager runs."""

    def forward(self, x):
        if self.training and not torch.compiler.is_compiling():
            EAGER_TRAINING_CALLS.append(1)
        return x


def _build_compile_probe(weights):
    parts = _build_tiny(weights)
    blocks = [*parts.blocks[:-1], nn.Sequential(parts.blocks[-1],
                                                _EagerTrainingProbe())]
    return BackboneParts(blocks, parts.neck, parts.feature_dim,
                         parts.preprocessing, parts.weights_id)


register_backbone(
    BackboneSpec(name="tiny_compile_probe", family="test",
                 build=_build_compile_probe, n_blocks=3, source="test"),
    overwrite=True,
)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None
                    and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_grid_search_with_compile_stays_compiled(colour_images, tiny_params):
    X, y = colour_images
    EAGER_TRAINING_CALLS.clear()
    clf = PretrainedCNNClassifier(**dict(
        tiny_params, backbone="tiny_compile_probe", unfreeze=1, max_epochs=1,
        batch_size=6, compile=True,
    ))
    # 9 architectures: more than TorchDynamo's recompile limit (8) of one
    # shared forward, where training would have gone eager.
    grid = {"hidden_layer_sizes": [(), (3,), (4,), (5,), (6,), (7,), (8,), (9,),
                                   (10,)]}
    search = GridSearchCV(clf, grid, cv=StratifiedKFold(2), n_jobs=1).fit(X, y)
    assert search.best_estimator_.predict(X[:2]).shape == (2,)
    # No training step of any fit, the last candidate's and the refit's
    # included, ran the trained part eagerly.
    assert EAGER_TRAINING_CALLS == []


# -- 7. leftovers of killed saves ----------------------------------------------------


def test_next_save_removes_leftovers_of_killed_saves(colour_images, tiny_params,
                                                     tmp_path):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    other = PretrainedCNNClassifier(**dict(tiny_params, lr=0.2)).fit(X, y)
    target = tmp_path / "m"
    clf.save(target)
    # What saves of m killed at various steps leave beside it: a half-written
    # temporary folder, and old models set aside or swapped out.
    other.save(tmp_path / "other")
    saving = tmp_path / ".m.saving-ab12cd_x"
    saving.mkdir()
    (saving / "model.safetensors").write_bytes(b"half")
    aside = tmp_path / f".m.old-{uuid.uuid4().hex}"
    shutil.copytree(tmp_path / "other", aside)
    swapped = tmp_path / ".m.saving-zz99yy00"
    shutil.copytree(tmp_path / "other", swapped)
    # Not ours: other names, or the folders of a model named "m.saving-x".
    keep = [".m.saving-short", ".m.old-notahex", "m.saving-ab12cd_x",
            ".m.saving-x.saving-ab12cd_x", ".n.old-" + uuid.uuid4().hex]
    for name in keep:
        (tmp_path / name).mkdir()

    loaded = PretrainedCNNClassifier.load(target)  # ignores them all
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))

    other.save(target)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"m", "other", *keep}
    np.testing.assert_array_equal(
        PretrainedCNNClassifier.load(target).predict_proba(X), other.predict_proba(X)
    )


# -- 8. device strings, and models from machines with more GPUs ----------------------


@pytest.mark.parametrize("device, n_gpus, message", [
    ("cuda:7", 2, r"'cuda:7'.*this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"),
    ("cuda:1", 1, r"this machine has 1 CUDA device \(cuda:0 to cuda:0\)"),
    ("cuda", 0, r"'cuda' is not available: no CUDA device is available"),
    ("tpu", 2, r"Unknown device 'tpu'\. Use 'auto', 'cpu', 'cuda', 'cuda:N'"),
    ("cuda:x", 2, r"Unknown device 'cuda:x'"),
])
def test_unusable_device_is_a_clear_error(colour_images, monkeypatch, device,
                                          n_gpus, message):
    X, y = colour_images
    if n_gpus:
        FakeGPUs(monkeypatch, [(8, 0)] * n_gpus)
    else:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    clf = PretrainedCNNClassifier(backbone="tiny_cnn", weights=None, device=device)
    with pytest.raises(ValueError, match="The 'device' parameter of "
                                         "PretrainedCNNClassifier is") as info:
        clf.fit(X, y)
    assert info.match(message)
    assert info.match("Use 'auto'")


@pytest.mark.parametrize("how", ["pickle", "safe-format"])
def test_model_from_a_missing_gpu_loads_on_an_available_one(
    colour_images, tiny_params, monkeypatch, tmp_path, how
):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    clf.device_ = "cuda:3"  # as if fitted on a 4-GPU machine
    if how == "pickle":
        data = pickle.dumps(clf)
        load = lambda: pickle.loads(data)  # noqa: E731
    else:
        clf.save(tmp_path / "m")
        load = lambda: PretrainedCNNClassifier.load(tmp_path / "m")  # noqa: E731
    gpus = FakeGPUs(monkeypatch, [(8, 0), (7, 0)])
    placed = []
    # No real GPU to move the module to: record where it would go instead.
    monkeypatch.setattr(TransferEstimatorBase, "_place_module",
                        lambda self, module: placed.append(self.device_) or module)
    with pytest.warns(UserWarning, match=r"fitted on 'cuda:3' but this machine "
                                         r"has 2 CUDA devices.*loading it on "
                                         r"'cuda'"):
        loaded = load()
    assert loaded.device_ == "cuda"
    assert placed == ["cuda"]
    # Precision is chosen again, for the GPU it now runs on.
    assert loaded.frozen_dtype_ == torch.bfloat16
    assert gpus.indices() == {0}
