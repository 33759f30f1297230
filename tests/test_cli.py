import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_colour_images

from sktransfer._cli import main

FIT = ["--backbone", "tiny_cnn", "--weights", "none", "--epochs", "6", "--lr",
       "0.05", "--batch-size", "8", "--device", "cpu", "-q"]


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
    args = [a for a in FIT if a != "-q"]
    assert main(["fit", str(data), "--out", str(tmp_path / "m"), *args]) == 0
    out, err = capfd.readouterr()
    assert "Found 6 images in 2 classes: green, red" in err
    assert "train_loss" in out  # the epoch table
    assert "Saved the model to" in err


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
                 "--weights", "none", "--image-size", "32", "--epochs", "1",
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
