"""The classifier as a step of a scikit-learn Pipeline.

Here a ``FunctionTransformer`` turns whatever the caller holds (file names
relative to a data folder) into the absolute paths the classifier reads, so
the fitted pipeline can be pointed at another copy of the data.
"""

import os

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sktransfer import PretrainedCNNClassifier
from sktransfer.datasets import emoji_folder, load_emoji

root = str(emoji_folder())
X, y = load_emoji()
names = np.array([os.path.relpath(p, root) for p in X], dtype=object)  # "bird/owl.png"


def to_paths(names, root=root):
    return np.array([os.path.join(root, n) for n in names], dtype=object)


pipe = make_pipeline(
    FunctionTransformer(to_paths),
    PretrainedCNNClassifier(
        "efficientnet_lite0", image_size=128, max_epochs=15, random_state=0
    ),
)
n_train, n_test, y_train, y_test = train_test_split(
    names, y, test_size=0.25, stratify=y, random_state=0
)
pipe.fit(n_train, y_train)
print(f"held-out accuracy: {pipe.score(n_test, y_test):.3f}")
print(dict(zip(n_test[:3], pipe.predict(n_test[:3]))))
