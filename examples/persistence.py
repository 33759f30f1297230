"""Save a fitted classifier with joblib and load it back, on the CPU.

The pickle holds the parameters, ``classes_`` and the trained weights with
every tensor on the CPU, so a model fitted on a GPU loads on a machine
without one. Loading never downloads anything; it warns
(``sktransfer.InconsistentVersionWarning``) if library versions differ.
Only load pickles you trust: unpickling can run code.
"""

import tempfile
from pathlib import Path

import joblib
import numpy as np

from sktransfer import PretrainedCNNClassifier
from sktransfer.datasets import load_emoji

X, y = load_emoji()
clf = PretrainedCNNClassifier(
    "efficientnet_lite0", unfreeze=1, image_size=96, max_epochs=3, random_state=0
)
clf.fit(X, y)

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "emoji_classifier.joblib"
    joblib.dump(clf, path)
    print(f"saved {path.name}: {path.stat().st_size / 1e6:.1f} MB")
    loaded = joblib.load(path)

print("device after loading:", loaded.device_)
diff = np.abs(loaded.predict_proba(X[:10]) - clf.predict_proba(X[:10])).max()
print(f"largest change in a probability after reloading: {diff:.1e}")
print("predictions:", loaded.predict(X[:5]))
