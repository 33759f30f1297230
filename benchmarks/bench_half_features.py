"""Frozen features stored in bf16 against the same features stored in float32.

Both arms run the frozen part in bf16 (``precision="bf16"``) on the same
images, folds and seed; they differ only in the dtype the features are kept
in between the frozen pass and the trained part: bf16 (what the library
does) or float32 (the storage dtype forced back to float32, as before).
Rows: a frozen fit (``unfreeze=0``, pooled embeddings) and an ``unfreeze=1``
fit (feature maps). Printed: bytes of the stored features of the training
images, and the share of test images whose predicted class is the same in
both arms. Data: the 222 bundled emoji, EfficientNet-Lite0 offline weights,
a stratified 70/30 split. Run: ``python benchmarks/bench_half_features.py``.
"""

import numpy as np
import torch
from sklearn.model_selection import train_test_split

import sktransfer._frozen as frozen_module
from sktransfer import PretrainedCNNClassifier
from sktransfer._frozen import extract_features
from sktransfer.datasets import load_emoji

BACKBONE = "efficientnet_lite0"


def _fit(unfreeze, X_train, y_train, store_float32):
    original = frozen_module.feature_dtype
    if store_float32:
        frozen_module.feature_dtype = lambda dtype: torch.float32
    try:
        clf = PretrainedCNNClassifier(
            BACKBONE, unfreeze=unfreeze, precision="bf16", cache=False,
            random_state=0, max_epochs=10,
        ).fit(X_train, y_train)
        features, _ = extract_features(clf._frozen_pass(clf.model_.frozen), X_train)
        return clf, features.nbytes, features.dtype
    finally:
        frozen_module.feature_dtype = original


def _predict(clf, X, store_float32):
    original = frozen_module.feature_dtype
    if store_float32:
        frozen_module.feature_dtype = lambda dtype: torch.float32
    try:
        return clf.predict(X)
    finally:
        frozen_module.feature_dtype = original


def main():
    X, y = load_emoji()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, stratify=y, random_state=0
    )
    print(f"{'fit':12s} {'stored':>9s} {'MiB':>8s} {'accuracy':>9s} {'agree':>7s}")
    for unfreeze in (0, 1):
        predictions = {}
        for store_float32 in (True, False):
            clf, n_bytes, dtype = _fit(unfreeze, X_train, y_train, store_float32)
            pred = _predict(clf, X_test, store_float32)
            predictions[store_float32] = pred
            name = str(dtype).replace("torch.", "")
            agree = np.mean(pred == predictions[True])
            print(f"unfreeze={unfreeze:<3d} {name:>9s} {n_bytes / 2**20:8.2f} "
                  f"{np.mean(pred == y_test):9.3f} {agree:7.3f}")


if __name__ == "__main__":
    main()
