"""The command line refuses the models it cannot serve: regressors and
multi-label classifiers, each with a one-line error saying which."""

import numpy as np
import pytest

from sktransfer import PretrainedCNNClassifier, PretrainedCNNRegressor
from sktransfer._cli import main


@pytest.mark.parametrize("kind", ["regressor", "multilabel"])
def test_predict_and_evaluate_refuse_other_targets(colour_images, tiny_params,
                                                   tmp_path, capsys, kind):
    X, labels = colour_images
    params = dict(tiny_params, head_solver="lbfgs")
    if kind == "regressor":
        model = PretrainedCNNRegressor(**params).fit(X, np.arange(len(X)))
        message = "holds a PretrainedCNNRegressor"
    else:
        model = PretrainedCNNClassifier(**params).fit(
            X, np.column_stack([labels == "red", labels == "green"]).astype(int))
        message = "holds a multi-label classifier"
    folder = str(model.save(tmp_path / "model"))
    # The model is read first: the data folder is never looked at.
    for args in (["predict", folder, X[0]], ["evaluate", folder, str(tmp_path)]):
        assert main([*args, "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("sktransfer: error: ") and message in err
        assert err.count("\n") == 1
