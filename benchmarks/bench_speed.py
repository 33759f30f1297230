"""Fit, cross-validation, search and predict time against one raw pass.

Run alone: ``python benchmarks/bench_speed.py [n_images]``.
"""

import sys
import tempfile
import warnings

import numpy as np
import torch
from _common import (
    PlainImages,
    default_preprocessing,
    make_images,
    raw_forward,
    timed,
    torchvision_backbone,
)
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

from sktransfer import PretrainedCNNClassifier, clear_feature_cache
from sktransfer._runtime import default_num_workers, resolve_precision
from sktransfer._transforms import eval_transform

BACKBONE = "resnet18"
EPOCHS = 10


def classifier(**params):
    defaults = dict(backbone=BACKBONE, weights=None, max_epochs=EPOCHS,
                    random_state=0, device="cpu")
    return PretrainedCNNClassifier(**{**defaults, **params})


def precision_name(dtype):
    """``"fp32"``, ``"bf16"`` or ``"fp16"`` for a frozen pass's autocast dtype.

    Rows are labelled from what ran (a fitted model's ``frozen_dtype_``),
    not from the parameter: ``precision="auto"`` is bf16 on a CPU with
    native bf16 units.
    """
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def skorch_freezer_fit(paths, labels, prep):
    """skorch's transfer-learning tutorial: frozen backbone via ``Freezer``,
    images decoded and run through the whole network every epoch."""
    from skorch import NeuralNetClassifier
    from skorch.callbacks import Freezer

    model = torchvision_backbone(BACKBONE)
    model.fc = torch.nn.Linear(512, len(np.unique(labels)))
    net = NeuralNetClassifier(
        model,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        lr=1e-3,
        batch_size=32,
        max_epochs=EPOCHS,
        train_split=None,
        iterator_train__shuffle=True,
        iterator_train__num_workers=default_num_workers(len(paths), 32),
        callbacks=[Freezer(lambda name: not name.startswith("fc."))],
        device="cpu",
        verbose=0,
    )
    net.fit(PlainImages(paths, eval_transform(prep), labels), y=None)
    return net


def run(n_images=200, folder=None):
    folder = folder or tempfile.mkdtemp(prefix="sktransfer-bench-")
    X, y = make_images(f"{folder}/images", n_images)
    prep = default_preprocessing(BACKBONE)
    t = {}
    raw_forward(BACKBONE, X[:8], prep)  # warm-up: thread pools, allocator
    with timed(t, "raw_1"):
        raw_forward(BACKBONE, X, prep)

    clear_feature_cache()
    # Explicit fp32, so it compares with the fp32 raw forward and with the
    # bf16 fit below whatever "auto" would choose on this CPU.
    with timed(t, "fit"):
        clf = classifier(precision="fp32").fit(X, y)
    clear_feature_cache()
    with timed(t, "predict"):
        predicted_fp32 = clf.predict(X)
    # The floor is timed twice and the faster run is used, so a slow
    # outlier never flatters a ratio.
    with timed(t, "raw_2"):
        raw_forward(BACKBONE, X, prep)
    t["raw"] = min(t["raw_1"], t["raw_2"])
    with timed(t, "skorch"):
        skorch_freezer_fit(X, y, prep)

    clear_feature_cache()
    with timed(t, "fit_bf16"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf_bf16 = classifier(precision="bf16").fit(X, y)
        # Its features are cached by the fit, so this adds no bf16 pass.
        bf16_agreement = np.mean(clf_bf16.predict(X) == predicted_fp32)
    low = precision_name(clf_bf16.frozen_dtype_)
    base = precision_name(clf.frozen_dtype_)
    # The rows below use the default precision="auto"; say what it is here.
    auto = precision_name(resolve_precision("auto", "cpu"))

    clear_feature_cache()
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    with timed(t, "cv"):
        cross_val_score(classifier(cache=f"{folder}/cv-cache"), X, y, cv=cv)
    clear_feature_cache()
    grid = {"lr": [1e-3, 3e-3], "hidden_layer_sizes": [(), (64,)]}
    with timed(t, "grid"):
        GridSearchCV(
            classifier(cache=f"{folder}/grid-cache"), grid,
            cv=StratifiedKFold(3, shuffle=True, random_state=0),
        ).fit(X, y)

    # unfreeze=1 trains layer4 on every image every epoch; half the images
    # keep the uncached run within the time budget.
    half, y_half = X[: n_images // 2], y[: n_images // 2]
    clear_feature_cache()
    with timed(t, "unfreeze1_cached"):
        classifier(unfreeze=1).fit(half, y_half)
    with timed(t, "unfreeze1_uncached"):
        classifier(unfreeze=1, cache=False).fit(half, y_half)

    return [
        ("1. fit (unfreeze=0, 10 ep) vs skorch Freezer, speed-up",
         t["skorch"] / t["fit"], ">= 5"),
        (f"2a. fit {base} / raw fp32 forward", t["fit"] / t["raw"], "<= 1.3"),
        (f"2b. fit {low} / raw fp32 forward", t["fit_bf16"] / t["raw"], "<= 0.5"),
        (f"2c. {low} vs {base} fit, share of equal predictions", bf16_agreement,
         ">= 0.98"),
        (f"3a. 5-fold CV (disk cache, cold, {auto}) / raw fp32 forward",
         t["cv"] / t["raw"], "<= 1.5"),
        (f"3b. GridSearchCV 4 x 3 folds (cold, {auto}) / raw fp32 forward",
         t["grid"] / t["raw"], "<= 1.6"),
        (f"4. predict throughput ({base}) / raw fp32 forward throughput",
         t["raw"] / t["predict"], ">= 0.9"),
        (f"5. unfreeze=1 (10 ep, {auto}) cache vs cache=False, speed-up",
         t["unfreeze1_uncached"] / t["unfreeze1_cached"], "report"),
    ], t


if __name__ == "__main__":
    rows, seconds = run(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    for name, value, target in rows:
        print(f"{name:60s} {value:8.2f}  target {target}")
    print({k: round(v, 1) for k, v in seconds.items()})
