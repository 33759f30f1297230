"""Quickstart: a pretrained classifier on image paths in a few lines.

The backbone stays frozen (``unfreeze=0``): only a linear head trains, on
features computed once per image. Runs offline on the bundled emoji drawings.
"""

from sklearn.model_selection import train_test_split

from sktransfer import PretrainedCNNClassifier
from sktransfer.datasets import load_emoji

X, y = load_emoji()  # X: image file paths, y: class names
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0
)

clf = PretrainedCNNClassifier(
    "efficientnet_lite0",  # ImageNet weights from an installed package
    unfreeze=0,
    image_size=128,
    max_epochs=15,
    random_state=0,
)
clf.fit(X_train, y_train)

print(f"held-out accuracy: {clf.score(X_test, y_test):.3f}")
print("classes:", list(clf.classes_))
for path, label in zip(X_test[:3], clf.predict(X_test[:3])):
    print(f"{path} -> {label}")
print("probabilities of the first image:", clf.predict_proba(X_test[:1]).round(2))
