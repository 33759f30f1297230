"""Cross-validation: the frozen backbone runs once per image, not once per fold.

With ``augment=False`` and a frozen prefix, the backbone's output is cached
(in memory by default), so five folds cost one feature extraction plus five
small head fits.
"""

import time

from sklearn.model_selection import StratifiedKFold, cross_val_score

from sktransfer import PretrainedCNNClassifier
from sktransfer.datasets import load_emoji

X, y = load_emoji()
clf = PretrainedCNNClassifier(
    "efficientnet_lite0", unfreeze=0, image_size=128, max_epochs=15, random_state=0
)
# Shuffle with a seed: the folder order is sorted by class.
cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)

start = time.perf_counter()
scores = cross_val_score(clf, X, y, cv=cv)
print(f"accuracy per fold: {scores.round(3)}")
print(f"mean {scores.mean():.3f} ± {scores.std():.3f} "
      f"in {time.perf_counter() - start:.1f} s")
