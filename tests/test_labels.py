"""Labels of every type come back as they went in; odd label sets fail clearly."""

import numpy as np
import pytest
from sklearn.model_selection import KFold, cross_val_score
from skorch.callbacks import Callback

from sktransfer import PretrainedCNNClassifier


def _relabel(y, mapping):
    return np.array([mapping[v] for v in y])


@pytest.mark.parametrize(
    "mapping, kind",
    [({"red": "r", "green": "g"}, "U"),
     ({"red": 0, "green": 1}, "i"),
     ({"red": -1, "green": 1}, "i"),
     ({"red": 3, "green": 7}, "i"),
     ({"red": True, "green": False}, "b"),
     ({"red": 1.0, "green": 2.0}, "f")],
)
def test_label_types_round_trip(colour_images, tiny_params, mapping, kind):
    X, y = colour_images
    y = _relabel(y, mapping)
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    pred = clf.predict(X)
    assert pred.dtype.kind == kind
    assert set(pred) <= set(clf.classes_)
    assert sorted(clf.classes_.tolist()) == sorted(set(mapping.values()))
    np.testing.assert_array_equal(pred, y)


def test_three_string_classes(three_class_images, tiny_params):
    X, y = three_class_images
    y = _relabel(y, {"red": "one", "green": "two", "blue": "three"})
    clf = PretrainedCNNClassifier(**{**tiny_params, "max_epochs": 6}).fit(X, y)
    assert clf.classes_.tolist() == ["one", "three", "two"]
    proba = clf.predict_proba(X)
    assert proba.shape == (30, 3)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(1)])
    assert (clf.predict(X) == y).mean() > 0.9


def test_object_labels_list(colour_images, tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(list(X), list(y))
    assert isinstance(clf.predict(X[:2])[0], str)


def test_single_class(colour_images, tiny_params):
    X, _ = colour_images
    with pytest.raises(ValueError, match=r"at least two classes; got only \['cat'\]"):
        PretrainedCNNClassifier(**tiny_params).fit(X, ["cat"] * len(X))


def test_singleton_class_with_validation_fraction(colour_images, tiny_params):
    X, y = colour_images
    y = y.copy()
    y[0] = "blue"
    clf = PretrainedCNNClassifier(**tiny_params, early_stopping=True,
                                  validation_fraction=0.25)
    with pytest.raises(ValueError) as info:
        clf.fit(X, y)
    message = str(info.value)
    assert ("Cannot hold out a stratified validation_fraction=0.25 of 24 images"
            in message)
    assert "Every class needs at least 2 images" in message
    # Without the held-out part the same data trains.
    clf.set_params(early_stopping=False).fit(X, y)
    assert "blue" in clf.classes_


def test_class_missing_from_a_cv_training_fold(three_class_images, tiny_params):
    X, y = three_class_images
    # Two "rare" images, both in the last of 3 unshuffled folds: that fold's
    # model never sees the class, yet scoring works.
    y = y.copy()
    order = np.argsort(y == "blue", kind="stable")
    X, y = X[order], y[order]
    y[-2:] = "rare"
    clf = PretrainedCNNClassifier(**tiny_params)
    scores = cross_val_score(clf, X, y, cv=KFold(3))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    clf.fit(X[:20], y[:20])
    assert "rare" not in clf.classes_
    assert set(clf.predict(X[20:])) <= set(clf.classes_)


class _RecordCriterion(Callback):
    def on_train_begin(self, net, **kwargs):
        weight = net.criterion_.weight
        self.weight_ = None if weight is None else weight.detach().clone()
        self.losses_ = []

    def on_epoch_end(self, net, **kwargs):
        self.losses_.append(net.history[-1, "train_loss"])


def test_class_weight_balanced_changes_the_loss(colour_images, tiny_params):
    X, y = colour_images
    # 12 red, 4 green: balanced weights are n / (2 * count).
    X, y = np.concatenate([X[y == "red"], X[y == "green"][:4]]), np.array(
        ["red"] * 12 + ["green"] * 4)
    runs = {}
    for class_weight in (None, "balanced"):
        record = _RecordCriterion()
        clf = PretrainedCNNClassifier(**tiny_params, class_weight=class_weight,
                                      net_params={"callbacks": [record]})
        clf.fit(X, y)
        runs[class_weight] = record
    assert runs[None].weight_ is None
    # classes_ is ["green", "red"]
    np.testing.assert_allclose(runs["balanced"].weight_.numpy(), [2.0, 16 / 24])
    assert runs[None].losses_ != runs["balanced"].losses_


def test_class_weight_dict(colour_images, tiny_params):
    X, y = colour_images
    record = _RecordCriterion()
    PretrainedCNNClassifier(**tiny_params, class_weight={"red": 3.0, "green": 1.0},
                            net_params={"callbacks": [record]}).fit(X, y)
    np.testing.assert_allclose(record.weight_.numpy(), [1.0, 3.0])


@pytest.mark.parametrize(
    "class_weight, fragments",
    [({"red": -1.0, "green": 1.0}, ["{'red': -1.0}", "finite weights >= 0"]),
     ({"red": float("nan")}, ["{'red': nan}", "non-negative number"]),
     ({"red": 1.0, "green": float("inf")}, ["{'green': inf}"]),
     ({"red": "heavy"}, ["{'red': 'heavy'}"]),
     ({"red": 1.0, "blue": 2.0}, ["['blue']", "not classes of y",
                                  "['green', 'red']"]),
     ({"red": 0, "green": 0.0}, ["0 for every class"])],
)
def test_class_weight_dict_with_bad_entries(colour_images, tiny_params,
                                            class_weight, fragments):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params, class_weight=class_weight)
    with pytest.raises(ValueError) as exc:
        clf.fit(X, y)
    for fragment in fragments:
        assert fragment in str(exc.value)


def test_class_weight_dict_keys_keep_their_type(colour_images, tiny_params):
    X, y = colour_images
    y = _relabel(y, {"red": 1, "green": 0})
    with pytest.raises(ValueError, match=r"\['1'\] that are not classes"):
        PretrainedCNNClassifier(**tiny_params, class_weight={"1": 2.0}).fit(X, y)
    record = _RecordCriterion()
    PretrainedCNNClassifier(**tiny_params, class_weight={1: 2.0, 0: 0.0},
                            net_params={"callbacks": [record]}).fit(X, y)
    np.testing.assert_allclose(record.weight_.numpy(), [0.0, 2.0])


def test_predictions_stay_inside_classes(colour_images, three_class_images,
                                         tiny_params):
    X, y = colour_images
    clf = PretrainedCNNClassifier(**tiny_params).fit(X, y)
    other, _ = three_class_images  # includes blue images never seen
    assert set(clf.predict(other)) <= set(clf.classes_)


@pytest.mark.parametrize(
    "y_bad, match",
    [(np.linspace(0, 1, 24), "Unknown label type: continuous"),
     (np.r_[np.nan, np.zeros(11), np.ones(12)], "Input y contains NaN")],
)
def test_continuous_or_nan_targets(colour_images, tiny_params, y_bad, match):
    X, _ = colour_images
    with pytest.raises(ValueError, match=match):
        PretrainedCNNClassifier(**tiny_params).fit(X, y_bad)


def test_two_d_y_column_warns_and_works(colour_images, tiny_params):
    X, y = colour_images
    from sklearn.exceptions import DataConversionWarning

    with pytest.warns(DataConversionWarning):
        clf = PretrainedCNNClassifier(**tiny_params).fit(X, y.reshape(-1, 1))
    assert clf.predict(X[:1]).ndim == 1
