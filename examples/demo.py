"""sktransfer end to end: does a pretrained backbone help, and by how much?

Run with ``make demo`` (the bundled emoji drawings) or
``make demo DATA=path/to/folder`` (one sub-folder per class). On two CPU
cores with no network it takes 5 to 6 minutes, most of it training the
from-scratch baseline:

1. the same 3-fold stratified cross-validation for three models of one
   architecture: pretrained and frozen, pretrained and fine-tuned, and
   trained from random weights; a table of accuracy and fit time;
2. a grid search over ``unfreeze`` and ``lr`` on a training split;
3. the best model on the held-out split: ``confusion_matrix.png`` and
   ``predictions.png`` in ``demo_output/``, and what it looks at and gets
   wrong: ``gradcam.png`` (class-activation maps) and ``top_losses.png``
   (the images of highest loss), from :mod:`sktransfer.inspection`;
4. the best model saved with joblib, loaded back and used to predict.

The frozen backbone's features are cached on disk in ``demo_output/cache``,
so every fold and grid candidate reuses them, and a second run is faster.
"""

import argparse
import time
from pathlib import Path

import joblib
import matplotlib
import numpy as np
from PIL import Image, ImageOps
from sklearn.metrics import ConfusionMatrixDisplay, accuracy_score
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    cross_validate,
    train_test_split,
)

from sktransfer import PretrainedCNNClassifier, load_image_folder
from sktransfer.datasets import emoji_folder
from sktransfer.inspection import GradCAMDisplay, TopLossesDisplay

matplotlib.use("Agg")  # files only: the demo must run without a display
import matplotlib.pyplot as plt  # noqa: E402

# The architecture compared in every setting. "efficientnet_lite0" loads its
# ImageNet weights from an installed package, so nothing is downloaded;
# "resnet18" works too once its torchvision weights are in $TORCH_HOME.
BACKBONE = "efficientnet_lite0"
# None: the size the weights were trained at (224 px for efficientnet_lite0).
# The 64 px drawings are scaled up to it, which suits the pretrained filters
# best; training the whole network from scratch dominates the run time.
IMAGE_SIZE = None
MAX_EPOCHS = 8
N_FOLDS = 3
SEED = 0
OUT = Path("demo_output")


def step(message):
    print(f"\n== {message}", flush=True)


def settings(cache):
    """The three models compared: identical but for weights and freezing."""
    common = dict(
        backbone=BACKBONE,
        image_size=IMAGE_SIZE,
        max_epochs=MAX_EPOCHS,
        random_state=SEED,
        cache=cache,
    )
    return {
        "pretrained, frozen (unfreeze=0)": PretrainedCNNClassifier(
            unfreeze=0, **common
        ),
        "pretrained, fine-tuned (unfreeze=1)": PretrainedCNNClassifier(
            unfreeze=1, **common
        ),
        # Random weights train everything at the head's learning rate: the
        # pretrained settings' smaller backbone rate would only handicap it.
        "random init (weights=None, unfreeze='all')": PretrainedCNNClassifier(
            weights=None, unfreeze="all", backbone_lr_ratio=1.0, **common
        ),
    }


def compare(X, y, cache):
    cv = StratifiedKFold(N_FOLDS, shuffle=True, random_state=SEED)
    rows = []
    for name, clf in settings(cache).items():
        step(f"{N_FOLDS}-fold cross-validation: {name}")
        res = cross_validate(clf, X, y, cv=cv, verbose=2)
        rows.append((name, res["test_score"], res["fit_time"]))
    step(f"Accuracy over the same {N_FOLDS} folds ({BACKBONE})")
    width = max(len(r[0]) for r in rows)
    print(f"{'model':<{width}}  {'accuracy':>15}  {'fit time / fold':>15}")
    for name, scores, fit_time in rows:
        acc = f"{scores.mean():.3f} ± {scores.std():.3f}"
        print(f"{name:<{width}}  {acc:>15}  {fit_time.mean():>14.1f}s")
    best_pretrained = max(r[1].mean() for r in rows[:2])
    gain = best_pretrained - rows[2][1].mean()
    print(f"\nPretrained weights add {gain:+.3f} accuracy over random init.")
    return rows


def search(X_train, y_train, cache):
    step("Grid search over unfreeze and lr (3-fold CV on the training split)")
    clf = PretrainedCNNClassifier(
        BACKBONE,
        image_size=IMAGE_SIZE,
        max_epochs=MAX_EPOCHS,
        random_state=SEED,
        cache=cache,
    )
    grid = GridSearchCV(
        clf,
        {"unfreeze": [0, 1], "lr": [1e-3, 3e-3]},
        cv=StratifiedKFold(3, shuffle=True, random_state=SEED),
        verbose=2,
    )
    grid.fit(X_train, y_train)
    print(f"best params: {grid.best_params_}  (CV accuracy {grid.best_score_:.3f})")
    return grid.best_estimator_


def plot_confusion(y_test, y_pred, labels, path):
    fig, ax = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay.from_predictions(
        y_test, y_pred, labels=labels, ax=ax, colorbar=False, xticks_rotation=45
    )
    ax.set_title(f"{BACKBONE}: held-out accuracy {accuracy_score(y_test, y_pred):.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def thumbnail(path, size=128):
    # User photos can be large, rotated by EXIF or transparent: show them upright,
    # small, and on white, as the classifier saw them.
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img.thumbnail((size, size))
        rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, "white")
    return Image.alpha_composite(background, rgba).convert("RGB")


def plot_predictions(paths, y_true, y_pred, path, n=24, cols=6):
    # Mistakes first, so the grid shows what the model gets wrong.
    order = np.argsort(y_true == y_pred, kind="stable")[:n]
    rows = int(np.ceil(len(order) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.3 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), order):
        ax.imshow(thumbnail(paths[i]))
        wrong = y_true[i] != y_pred[i]
        ax.set_title(
            f"pred: {y_pred[i]}\ntrue: {y_true[i]}",
            fontsize=9,
            color="red" if wrong else "black",
        )
    fig.suptitle("Held-out images (wrong predictions in red)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_inspection(clf, X_test, y_test, cam_path, losses_path, n=12):
    # Where the model finds the evidence for the class it predicts: a dozen
    # held-out images (the maps need a backward pass, so a few seconds).
    cam = GradCAMDisplay.from_estimator(clf, X_test[:n], n_cols=6)
    cam.figure_.suptitle("Where the model sees its predicted class (HiResCAM)")
    cam.figure_.savefig(cam_path, dpi=100)
    plt.close(cam.figure_)
    top = TopLossesDisplay.from_estimator(clf, X_test, y_test, k=9)
    top.figure_.savefig(losses_path, dpi=100)
    plt.close(top.figure_)
    return top


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="image folder, one sub-folder per class (default: bundled emoji)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    cache = str(OUT / "cache")

    data = args.data or emoji_folder()
    step(f"Loading images from {data}")
    X, y = load_image_folder(data)
    classes, counts = np.unique(y, return_counts=True)
    print(f"{len(X)} images in {len(classes)} classes:")
    print(", ".join(f"{c} ({n})" for c, n in zip(classes, counts)))

    compare(X, y, cache)

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=SEED
    )
    best = search(X_train, y_train, cache)

    step(f"Evaluating the best model on {len(X_test)} held-out images")
    y_pred = best.predict(X_test)
    print(f"held-out accuracy: {accuracy_score(y_test, y_pred):.3f}")
    plot_confusion(y_test, y_pred, classes, OUT / "confusion_matrix.png")
    plot_predictions(X_test, y_test, y_pred, OUT / "predictions.png")
    print(f"wrote {OUT / 'confusion_matrix.png'} and {OUT / 'predictions.png'}")

    step("What the best model looks at, and what it gets most wrong")
    top = plot_inspection(best, X_test, y_test, OUT / "gradcam.png",
                          OUT / "top_losses.png")
    for i, loss in zip(top.indices[:3], top.losses[:3]):
        print(f"  loss {loss:.2f}: {Path(X_test[i]).name} ({y_test[i]}) "
              f"predicted {y_pred[i]}")
    print(f"wrote {OUT / 'gradcam.png'} and {OUT / 'top_losses.png'}")

    step("Saving the best model with joblib and loading it back")
    model_path = OUT / "best_model.joblib"
    joblib.dump(best, model_path)
    loaded = joblib.load(model_path)  # tensors load on the CPU
    again = loaded.predict(X_test[:5])
    for p, label in zip(X_test[:5], again):
        print(f"  {Path(p).parent.name}/{Path(p).name} -> {label}")
    same = np.array_equal(again, y_pred[:5])
    print(f"{model_path} ({model_path.stat().st_size / 1e6:.1f} MB); "
          f"same predictions after reload: {same}")
    print(f"\nDone in {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
