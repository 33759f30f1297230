"""Grid search over backbones and how many of their last blocks to fine-tune.

A list of grids lets each backbone have its own range of ``unfreeze``.
Candidates with ``unfreeze=0`` share cached backbone features across folds.
To compare ImageNet backbones from torchvision, add e.g. ``"resnet18"``
once its weights are in ``$TORCH_HOME`` (see offline_weights.py).
"""

import pandas as pd
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sktransfer import PretrainedCNNClassifier
from sktransfer.datasets import load_emoji

X, y = load_emoji()
clf = PretrainedCNNClassifier(image_size=64, max_epochs=5, random_state=0)
param_grid = [
    # pretrained: the head only, or the head and the last block
    {"backbone": ["efficientnet_lite0"], "unfreeze": [0, 1]},
    # a torchvision family from random weights, for comparison
    {"backbone": ["mobilenet_v3_small"], "weights": [None], "unfreeze": ["all"]},
]
search = GridSearchCV(
    clf, param_grid, cv=StratifiedKFold(3, shuffle=True, random_state=0), verbose=1
)
search.fit(X, y)

results = pd.DataFrame(search.cv_results_)
cols = ["param_backbone", "param_weights", "param_unfreeze", "mean_test_score",
        "mean_fit_time"]
print(results[cols].sort_values("mean_test_score", ascending=False).to_string())
print("best:", search.best_params_)
