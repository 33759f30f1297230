import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_colour_images

from sktransfer import PretrainedCNNClassifier, PretrainedCNNRegressor
from sktransfer._cli import main

# unfreeze=1, so that epochs run (a frozen head is fitted by L-BFGS instead).
FIT = ["--backbone", "tiny_cnn", "--weights", "none", "--max-epochs", "6", "--lr",
       "0.05", "--batch-size", "8", "--device", "cpu", "--random-state", "0",
       "--unfreeze", "1", "-q"]


def colour_folder(root, n_per_class=6, classes=("red", "green"), seed=0):
    for label in classes:
        make_colour_images(root / label, n_per_class, classes=(label,), seed=seed)
    return root


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A model trained by the CLI on a two-class folder, and a held-out folder."""
    root = tmp_path_factory.mktemp("cli")
    data = colour_folder(root / "train")
    test = colour_folder(root / "test", n_per_class=3, seed=1)
    model = root / "model"
    assert main(["fit", str(data), "--out", str(model), *FIT]) == 0
    return model, test


def test_fit_writes_a_model(fitted):
    model, _ = fitted
    assert any(model.iterdir())


def test_fit_prints_progress(tmp_path, capfd):
    data = colour_folder(tmp_path / "data", n_per_class=3)
    # unfreeze=1: epochs run (a frozen head is fitted by L-BFGS, no epochs).
    args = [a for a in FIT if a != "-q"] + ["--unfreeze", "1"]
    assert main(["fit", str(data), "--out", str(tmp_path / "m"), *args]) == 0
    out, err = capfd.readouterr()
    assert "Found 6 images in 2 classes: green, red" in err
    assert "train_loss" in out  # the epoch table
    written = "manifest.json, model.safetensors"
    assert f"Saved the model to {tmp_path / 'm'}: {written}" in err


def test_predict_csv(fitted, capsys):
    model, test = fitted
    assert main(["predict", str(model), str(test), "-q"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 6
    correct = [Path(r["path"]).parent.name == r["prediction"] for r in rows]
    assert sum(correct) >= 5


def test_predict_json_with_proba(fitted, capsys):
    model, test = fitted
    image = str(next((test / "red").iterdir()))
    assert main(["predict", str(model), image, "--proba", "--format", "json",
                 "-q"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["path"] == image
    assert set(record["proba"]) == {"green", "red"}
    assert sum(record["proba"].values()) == pytest.approx(1.0, abs=1e-5)
    assert record["prediction"] == max(record["proba"], key=record["proba"].get)


def test_predict_to_file(fitted, tmp_path):
    model, test = fitted
    out = tmp_path / "pred.csv"
    assert main(["predict", str(model), str(test), "--proba", "--output",
                 str(out), "-q"]) == 0
    header = out.read_text().splitlines()[0]
    assert header == "path,prediction,proba_green,proba_red"


def test_evaluate_with_confusion_matrix(fitted, tmp_path, capsys):
    model, test = fitted
    png = tmp_path / "cm.png"
    assert main(["evaluate", str(model), str(test), "--confusion-matrix",
                 str(png), "-q"]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.splitlines()[0].split(":")[1])
    assert accuracy >= 5 / 6
    assert "precision" in out and "green" in out and "red" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backbones_lists_the_registry(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert "resnet50" in names and "tiny_cnn" in names
    assert main(["backbones", "--family", "resnet"]) == 0
    out = capsys.readouterr().out
    assert {line.split()[0] for line in out.splitlines()} >= {"resnet18", "resnet50"}
    assert "vgg16" not in out
    assert main(["backbones", "--family", "efficientnet"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines()
                if x.startswith("efficientnet_b3 "))
    assert line.split()[1:6] == ["efficientnet", "8", "blocks", "300", "px"]
    assert line.endswith(("weights offline", "weights to download"))


def assert_one_line_error(capfd, *fragments):
    out, err = capfd.readouterr()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sktransfer: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_data_dir(tmp_path, capfd):
    missing = tmp_path / "nope"
    assert main(["fit", str(missing), "--out", str(tmp_path / "m"), *FIT]) == 1
    assert_one_line_error(capfd, "does not exist", str(missing))


def test_unknown_backbone(tmp_path, capfd):
    data = colour_folder(tmp_path / "data", n_per_class=2)
    args = ["fit", str(data), "--out", str(tmp_path / "m"), *FIT,
            "--backbone", "resnet5"]
    assert main(args) == 1
    assert_one_line_error(capfd, "Unknown backbone 'resnet5'", "resnet50")
    assert not (tmp_path / "m").exists()


def test_bad_image(tmp_path, capfd):
    data = colour_folder(tmp_path / "data", n_per_class=3)
    good = next((data / "red").iterdir()).read_bytes()
    (data / "red" / "broken.png").write_bytes(good[: len(good) // 2])
    assert main(["fit", str(data), "--out", str(tmp_path / "m"), *FIT]) == 1
    assert_one_line_error(capfd, "broken.png", "on_bad_image")


def test_predict_errors(fitted, tmp_path, capfd):
    model, test = fitted
    assert main(["predict", str(tmp_path / "none"), str(test), "-q"]) == 1
    assert_one_line_error(capfd, "Model folder", "does not exist")
    assert main(["predict", str(model), str(tmp_path / "x.png"), "-q"]) == 1
    assert_one_line_error(capfd, "x.png", "does not exist")
    bad = tmp_path / "bad.png"
    good = next((test / "red").iterdir()).read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a truncated file
    assert main(["predict", str(model), str(bad), "-q"]) == 1
    assert_one_line_error(capfd, "bad.png")


def test_evaluate_unknown_class(fitted, tmp_path, capfd):
    model, _ = fitted
    other = colour_folder(tmp_path / "other", n_per_class=1, classes=("blue",))
    assert main(["evaluate", str(model), str(other), "-q"]) == 1
    assert_one_line_error(capfd, "'blue'", "not classes of the model")


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit"])
    assert exc.value.code == 2
    assert "DATA_DIR" in capsys.readouterr().err


def test_real_subprocess(tmp_path):
    """The command in a fresh interpreter: load a saved model and predict.

    tiny_cnn exists only in this process, so the model is resnet18 with
    random weights on 32-pixel crops, fitted here through main().
    """
    data = colour_folder(tmp_path / "data", n_per_class=3)
    model = tmp_path / "model"
    assert main(["fit", str(data), "--out", str(model), "--backbone", "resnet18",
                 "--weights", "none", "--image-size", "32", "--max-epochs", "1",
                 "--device", "cpu", "-q"]) == 0
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "sktransfer._cli", "predict", str(model),
         str(data / "red"), "--format", "json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["path"] for r in records] == sorted(
        str(p) for p in (data / "red").iterdir()
    )
    assert {r["prediction"] for r in records} <= {"green", "red"}
    assert "Predicting 3 images" in result.stderr


# -- options carry the API's names and defaults ----------------------------

def _fit_params(monkeypatch, argv):
    """The classifier parameters that `sktransfer fit ARGV` trains with."""
    from sktransfer import PretrainedCNNClassifier

    seen = {}

    def fake_fit(self, X, y):
        seen.update(self.get_params())
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(PretrainedCNNClassifier, "fit", fake_fit)
    assert main(argv) == 130
    return seen


def test_fit_defaults_are_the_api_defaults(tmp_path, monkeypatch):
    from sktransfer import PretrainedCNNClassifier

    data = colour_folder(tmp_path / "data", n_per_class=2)
    params = _fit_params(monkeypatch, ["fit", str(data), "--out",
                                       str(tmp_path / "m"), "-q"])
    defaults = PretrainedCNNClassifier().get_params()
    for name in ["backbone", "weights", "unfreeze", "max_epochs", "lr",
                 "batch_size", "image_size", "augment", "early_stopping",
                 "validation_fraction", "n_iter_no_change", "class_weight",
                 "precision", "device", "on_bad_image", "random_state"]:
        assert params[name] == defaults[name], name
    assert params["random_state"] is None and params["early_stopping"] is False


def test_fit_options_reach_the_classifier(tmp_path, monkeypatch):
    data = colour_folder(tmp_path / "data", n_per_class=2)
    params = _fit_params(monkeypatch, [
        "fit", str(data), "--out", str(tmp_path / "m"), "-q", "--max-epochs", "3",
        "--random-state", "7", "--class-weight", "balanced", "--early-stopping",
        "--validation-fraction", "0.25", "--n-iter-no-change", "2",
        "--precision", "fp32", "--unfreeze", "all", "--augment",
    ])
    assert (params["max_epochs"], params["random_state"]) == (3, 7)
    assert params["class_weight"] == "balanced" and params["early_stopping"] is True
    assert params["validation_fraction"] == 0.25 and params["n_iter_no_change"] == 2
    assert params["precision"] == "fp32" and params["unfreeze"] == "all"
    assert params["augment"] is True


@pytest.mark.parametrize("old", [["--epochs", "3"], ["--seed", "1"]])
def test_old_option_names_are_gone(tmp_path, old, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(tmp_path), "--out", str(tmp_path / "m"), *old])
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_fit_with_early_stopping_and_class_weight(tmp_path, capfd):
    data = colour_folder(tmp_path / "data", n_per_class=5)
    model = tmp_path / "m"
    args = [a for a in FIT if a != "-q"]
    assert main(["fit", str(data), "--out", str(model), *args, "--early-stopping",
                 "--validation-fraction", "0.4", "--n-iter-no-change", "2",
                 "--class-weight", "balanced"]) == 0
    out, err = capfd.readouterr()
    assert "valid_loss" in out  # a held-out part is scored only with early stopping
    assert "early stopping on 0.4 of the images" in err


def test_no_validation_without_early_stopping(tmp_path, capfd):
    data = colour_folder(tmp_path / "data", n_per_class=3)
    args = [a for a in FIT if a != "-q"]
    assert main(["fit", str(data), "--out", str(tmp_path / "m"), *args,
                 "--validation-fraction", "0.5"]) == 0
    out, _ = capfd.readouterr()
    assert "train_loss" in out and "valid_loss" not in out


# -- paths ------------------------------------------------------------------

def test_tilde_is_expanded_in_every_path(fitted, tmp_path, monkeypatch, capfd):
    model, test = fitted
    monkeypatch.setenv("HOME", str(tmp_path))
    colour_folder(tmp_path / "data", n_per_class=2)
    assert main(["fit", "~/data", "--out", "~/m", *FIT]) == 0
    assert (tmp_path / "m" / "manifest.json").is_file()
    assert main(["predict", "~/m", "~/data/red", "--output", "~/p.csv", "-q"]) == 0
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3
    assert main(["evaluate", "~/m", "~/data", "--confusion-matrix", "~/cm.png",
                 "-q"]) == 0
    assert (tmp_path / "cm.png").is_file()
    assert not (Path.cwd() / "~").exists()


def test_out_folder_that_is_not_empty_needs_force(fitted, tmp_path, capfd):
    data = colour_folder(tmp_path / "data", n_per_class=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["fit", str(data), "--out", str(out), *FIT]) == 1
    assert_one_line_error(capfd, str(out), "not empty", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # Saving replaces the whole folder, so --force never deletes files that
    # are not a saved model: such a folder is refused even then.
    assert main(["fit", str(data), "--out", str(out), *FIT, "--force"]) == 1
    assert_one_line_error(capfd, str(out), "no saved model")
    assert (out / "notes.txt").read_text() == "mine"
    # A folder holding a saved model is replaced with --force.
    model = tmp_path / "model"
    assert main(["fit", str(data), "--out", str(model), *FIT]) == 0
    capfd.readouterr()
    args = [a for a in FIT if a != "-q"]
    assert main(["fit", str(data), "--out", str(model), *args, "--force"]) == 0
    _, err = capfd.readouterr()
    assert "manifest.json, model.safetensors" in err
    (tmp_path / "file").write_text("")
    assert main(["fit", str(data), "--out", str(tmp_path / "file"), *FIT]) == 1
    assert_one_line_error(capfd, "is a file")


def test_predict_skips_hidden_folders_as_load_image_folder_does(fitted, tmp_path,
                                                                capfd):
    model, test = fitted
    images = tmp_path / "images"
    colour_folder(images, n_per_class=1)
    colour_folder(images / ".thumbnails", n_per_class=1)
    assert main(["predict", str(model), str(images), "-q"]) == 0
    out, err = capfd.readouterr()
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2 and not any(".thumbnails" in r["path"] for r in rows)
    assert "sktransfer: warning: Skipped 1 hidden" in err and ".thumbnails" in err


# -- errors: one line, never a traceback -------------------------------------

@pytest.mark.parametrize("device, fragment", [
    ("foo", "Unknown device 'foo'"),
    ("cuda:7", "'cuda:7' is not available"),
])
def test_unusable_device(tmp_path, capfd, monkeypatch, device, fragment):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    data = colour_folder(tmp_path / "data", n_per_class=2)
    args = list(FIT)
    args[args.index("--device") + 1] = device
    assert main(["fit", str(data), "--out", str(tmp_path / "m"), *args]) == 1
    assert_one_line_error(capfd, fragment)
    assert not (tmp_path / "m").exists()


def test_weights_unavailable_offline(tmp_path, capfd, monkeypatch):
    import urllib.error

    import torch

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data = colour_folder(tmp_path / "data", n_per_class=2)
    assert main(["fit", str(data), "--out", str(tmp_path / "m"), "--backbone",
                 "resnet18", "--device", "cpu", "--max-epochs", "1", "-q"]) == 1
    assert_one_line_error(capfd, "Could not download or load the weights",
                          "resnet18", "To work offline")
    assert not (tmp_path / "m").exists()


def test_disk_full_when_saving(tmp_path, capfd, monkeypatch):
    import errno

    from sktransfer import PretrainedCNNClassifier

    def full_disk(self, folder, **kwargs):
        os.makedirs(folder, exist_ok=True)
        Path(folder, "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PretrainedCNNClassifier, "save", full_disk)
    data = colour_folder(tmp_path / "data", n_per_class=2)
    out = tmp_path / "m"
    assert main(["fit", str(data), "--out", str(out), *FIT]) == 1
    assert_one_line_error(capfd, "No space left", str(out), "Free some space")
    assert not out.exists()  # no half-written model left behind


def test_broken_model_folder(fitted, tmp_path, capfd):
    model, test = fitted
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    manifest = broken / "manifest.json"
    manifest.write_text(manifest.read_text()[:-20])  # cut short
    for command in (["predict", str(broken), str(test)],
                    ["evaluate", str(broken), str(test)]):
        assert main([*command, "-q"]) == 1
        out, err = capfd.readouterr()
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert err.startswith("sktransfer: error: ") and str(broken) in err
    (broken / "model.safetensors").unlink()
    manifest.write_text((model / "manifest.json").read_text())
    assert main(["predict", str(broken), str(test), "-q"]) == 1
    assert_one_line_error(capfd, "model.safetensors")


def test_evaluate_a_model_with_integer_classes(tmp_path, tiny_params, capsys):
    from conftest import make_colour_images

    from sktransfer import PretrainedCNNClassifier

    X, y = make_colour_images(tmp_path / "train", 6)
    y = (y == "red").astype(int)  # green -> 0, red -> 1
    clf = PretrainedCNNClassifier(**{**tiny_params, "max_epochs": 6}).fit(X, y)
    clf.save(tmp_path / "model")
    test = tmp_path / "test"
    make_colour_images(test / "0", 3, classes=("green",), seed=1)
    make_colour_images(test / "1", 3, classes=("red",), seed=1)
    assert clf.score(*_paths_and_ints(test)) == 1.0
    assert main(["evaluate", str(tmp_path / "model"), str(test), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "accuracy: 1.0000"
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.split()[:1] in (["0"], ["1"])}
    assert rows["0"][-1] == "3" and rows["1"][-1] == "3"  # support per class
    assert rows["0"][:3] == ["1.00", "1.00", "1.00"]


def _paths_and_ints(folder):
    from sktransfer import load_image_folder

    paths, labels = load_image_folder(folder)
    return paths, labels.astype(int)


# The models the command line cannot serve: regressors and multi-label
# classifiers, each refused with a one-line error saying which.
@pytest.mark.parametrize("kind", ["regressor", "multilabel"])
def test_predict_and_evaluate_refuse_other_targets(colour_images, tiny_params,
                                                   tmp_path, capsys, kind):
    X, labels = colour_images
    params = dict(tiny_params, head_solver="lbfgs")
    if kind == "regressor":
        model = PretrainedCNNRegressor(**params).fit(X, np.arange(len(X)))
        message = "holds a PretrainedCNNRegressor"
    else:
        model = PretrainedCNNClassifier(**params).fit(
            X, np.column_stack([labels == "red", labels == "green"]).astype(int))
        message = "holds a multi-label classifier"
    folder = str(model.save(tmp_path / "model"))
    # The model is read first: the data folder is never looked at.
    for args in (["predict", folder, X[0]], ["evaluate", folder, str(tmp_path)]):
        assert main([*args, "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("sktransfer: error: ") and message in err
        assert err.count("\n") == 1
