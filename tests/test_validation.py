"""Bad X, y and parameter values give sklearn-style errors that say the fix."""

import numpy as np
import pytest

from sktransfer import PretrainedCNNClassifier
from sktransfer._data import check_image_paths


@pytest.fixture
def clf(tiny_params):
    return PretrainedCNNClassifier(**tiny_params)


def test_two_d_input(clf, colour_images):
    X, y = colour_images
    with pytest.raises(ValueError, match=r"1-D array-like .* shape \(12, 2\)"):
        clf.fit(X.reshape(12, 2), y[:12])


def test_single_path(clf):
    with pytest.raises(ValueError, match=r"single path 'a.png'. Wrap it in a list"):
        clf.fit("a.png", ["x"])


@pytest.mark.parametrize(
    "bad, what",
    [(3.5, "the number 3.5"), (7, "the number 7"), (None, "a missing value"),
     (np.nan, "a missing value"), ("", "an empty string"), (b"a.png", "a bytes")],
)
def test_non_path_entries(clf, colour_images, bad, what):
    X, y = colour_images
    X = X.copy()
    X[4] = bad
    with pytest.raises(ValueError, match=rf"X\[4\] is {what}.*not an image file path"):
        clf.fit(X, y)


def test_numbers_instead_of_paths(clf):
    with pytest.raises(ValueError, match=r"X\[0\] is the number 1"):
        clf.fit(np.arange(1, 5), [0, 1, 0, 1])


def test_empty_x(clf):
    with pytest.raises(ValueError, match="found 0 image paths while a minimum of 1"):
        clf.fit([], [])


def test_inconsistent_lengths(clf, colour_images):
    X, y = colour_images
    with pytest.raises(ValueError, match="inconsistent numbers of samples: 24 image "
                                         "paths and 23 labels"):
        clf.fit(X, y[:-1])


def test_predict_validates_x(clf, colour_images):
    X, y = colour_images
    clf.fit(X, y)
    with pytest.raises(ValueError, match=r"X\[1\] is a missing value"):
        clf.predict([X[0], None])
    with pytest.raises(ValueError, match="1-D"):
        clf.predict_proba(X.reshape(-1, 2))


@pytest.mark.parametrize(
    "param, value, expected",
    [("unfreeze", -1, "The 'unfreeze' parameter of PretrainedCNNClassifier must be "
                      "an int in the range [0, inf) or a str among {'all'}. Got -1 "
                      "instead."),
     ("unfreeze", "some", "The 'unfreeze' parameter of PretrainedCNNClassifier"),
     ("lr", 0.0, "The 'lr' parameter of PretrainedCNNClassifier must be a float "
                 "in the range (0.0, inf). Got 0.0 instead."),
     ("batch_size", 0, "The 'batch_size' parameter"),
     ("on_bad_image", "ignore", "The 'on_bad_image' parameter"),
     ("dropout", 1.0, "The 'dropout' parameter"),
     ("precision", "fp8", "The 'precision' parameter"),
     ("validation_fraction", 1.5, "The 'validation_fraction' parameter"),
     ("n_iter_no_change", 0, "The 'n_iter_no_change' parameter")],
)
def test_bad_parameter_values(clf, colour_images, param, value, expected):
    X, y = colour_images
    clf.set_params(**{param: value})
    with pytest.raises(ValueError) as info:
        clf.fit(X, y)
    assert expected in str(info.value)


def test_unknown_backbone_suggests_close_name(clf, colour_images):
    X, y = colour_images
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet5'. Did you mean "
                                         r"'resnet50'\?"):
        clf.set_params(backbone="resnet5").fit(X, y)
    with pytest.raises(ValueError, match="Did you mean 'tiny_cnn'"):
        clf.set_params(backbone="tiny_cn").fit(X, y)


def test_unfreeze_beyond_block_count(clf, colour_images):
    X, y = colour_images
    with pytest.raises(ValueError, match=r"unfreeze=5 is larger than the 3 blocks of "
                                         r"backbone 'tiny_cnn'. Use an int from 0 "
                                         r"to 3, or 'all'"):
        clf.set_params(unfreeze=5).fit(X, y)


def test_early_stopping_is_a_boolean(clf, colour_images):
    # scikit-learn's meaning: a switch, with the patience in n_iter_no_change.
    X, y = colour_images
    with pytest.raises(ValueError, match="The 'early_stopping' parameter of "
                                         "PretrainedCNNClassifier must be"):
        clf.set_params(early_stopping=2).fit(X, y)


def test_check_image_paths_returns_object_strings(tmp_path):
    long_name = str(tmp_path / ("x" * 200 + ".png"))
    out = check_image_paths([tmp_path / "a.png", "b.png", long_name])
    assert out.dtype == object
    assert all(type(p) is str for p in out)
    assert out[0] == str(tmp_path / "a.png")
    assert check_image_paths(np.array(["a.png", "bb.png"])).dtype == object


def test_sparse_input(clf):
    from scipy.sparse import csr_matrix

    with pytest.raises(TypeError, match="sparse input is not supported"):
        clf.fit(csr_matrix(np.eye(3)), [0, 1, 0])
