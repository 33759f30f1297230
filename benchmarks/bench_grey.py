"""Grey images: three copies into the RGB stem, or one into an adapted stem.

The bundled emoji set (222 images, 8 classes) is turned grey (Pillow's
``L``) in memory, then classified with the offline EfficientNet-Lite0
weights in several ways in the same run and on the same folds:

- ``rgb``: ``channels="rgb"``, the grey image copied into three channels;
- ``grey``: ``channels="grey"``, one channel into the adapted stem;
- both again with ``unfreeze=1`` (the last block trained);
- ``logreg``: scikit-learn's ``LogisticRegression`` on the frozen
  embeddings of the ``rgb`` path (the linear-probe baseline).

The colour images with the default estimator are printed for reference.
Printed: mean and standard deviation of the accuracy over 5 stratified
folds, and the seconds each took. Run: ``python benchmarks/bench_grey.py``.
"""

import time

from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor
from sktransfer.datasets import load_emoji

BACKBONE = "efficientnet_lite0"


def _grey(paths):
    images = []
    for p in paths:
        with Image.open(p) as img:
            rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        images.append(Image.alpha_composite(white, rgba).convert("L"))
    return images


def main():
    X, y = load_emoji()
    grey = _grey(X)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    common = dict(random_state=0, cache=True)
    rows = [
        ("colour, channels='rgb'", PretrainedCNNClassifier(BACKBONE, **common), X),
        ("grey, channels='rgb'", PretrainedCNNClassifier(BACKBONE, **common), grey),
        ("grey, channels='grey'",
         PretrainedCNNClassifier(BACKBONE, channels="grey", **common), grey),
        ("grey, channels='rgb', unfreeze=1",
         PretrainedCNNClassifier(BACKBONE, unfreeze=1, **common), grey),
        ("grey, channels='grey', unfreeze=1",
         PretrainedCNNClassifier(BACKBONE, channels="grey", unfreeze=1, **common),
         grey),
        ("grey, LogisticRegression probe",
         make_pipeline(PretrainedFeatureExtractor(BACKBONE, **common),
                       StandardScaler(), LogisticRegression(max_iter=2000)), grey),
    ]
    print(f"{'input':34s} {'accuracy':>16s} {'seconds':>8s}")
    for name, est, data in rows:
        start = time.perf_counter()
        scores = cross_val_score(est, data, y, cv=folds)
        took = time.perf_counter() - start
        print(f"{name:34s} {scores.mean():9.3f} ± {scores.std():.3f} {took:8.1f}")


if __name__ == "__main__":
    main()
