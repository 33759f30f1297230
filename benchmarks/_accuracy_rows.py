"""The rows of the accuracy benchmark: a declarative table of recipes.

Each row is a name and the parameters of a ``PretrainedCNNClassifier``
(optionally wrapped in a grid search); every unnamed parameter keeps the
library's default, so the table measures the defaults as they are. A row
naming a parameter the installed library does not have is reported as
"n/a (parameter missing)" rather than stopping the run, which lets the table
name recipes before the library implements them.
"""

import inspect
from dataclasses import dataclass, field

from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from sktransfer import PretrainedCNNClassifier, PretrainedFeatureExtractor

__all__ = ["BACKBONE", "ROWS", "Row", "missing_parameters"]

BACKBONE = "efficientnet_lite0"
SEED = 0


@dataclass(frozen=True)
class Row:
    """One recipe.

    Parameters
    ----------
    name : str
        Label in the tables; the target checks refer to rows by this name.
    params : dict
        Classifier parameters on top of ``backbone`` and ``random_state=0``.
    grid : dict or None
        If set, the row is a ``GridSearchCV`` over this grid (inner 3-fold,
        seeded), scored on the outer test fold.
    probe : bool
        The linear-probe baseline: frozen embeddings from
        ``PretrainedFeatureExtractor``, then ``LogisticRegression``.
    quick : bool
        Kept by ``--quick``.
    """

    name: str
    params: dict = field(default_factory=dict)
    grid: dict | None = None
    probe: bool = False
    quick: bool = False

    def estimator(self):
        """A fresh, unfitted estimator for one fold (not used for the probe)."""
        clf = PretrainedCNNClassifier(BACKBONE, random_state=SEED, **self.params)
        if self.grid is None:
            return clf
        inner = StratifiedKFold(3, shuffle=True, random_state=SEED)
        return GridSearchCV(clf, self.grid, cv=inner, n_jobs=1, error_score="raise")


PROBE = "linear probe"
FROZEN = "frozen default"
FINE_TUNED = "fine-tuned default"
AUGMENT = "fine-tuned + augment"
AUGMENT_TTA = "fine-tuned + augment + TTA"

ROWS = (
    Row(PROBE, probe=True, quick=True),
    Row(FROZEN, {"unfreeze": 0}, quick=True),
    Row(FINE_TUNED, {"unfreeze": 1}, quick=True),
    Row("fine-tuned unfreeze=2", {"unfreeze": 2}),
    Row(AUGMENT, {"unfreeze": 1, "augment": True}),
    Row(AUGMENT_TTA, {"unfreeze": 1, "augment": True, "tta": True}, quick=True),
    Row("GridSearchCV unfreeze 0/1/2", grid={"unfreeze": [0, 1, 2]}),
)


def missing_parameters(row):
    """Parameters of ``row`` (grid included) that the classifier does not take."""
    accepted = set(inspect.signature(PretrainedCNNClassifier).parameters)
    wanted = set(row.params) | set(row.grid or ())
    return sorted(wanted - accepted)


def probe_extractor():
    """The frozen backbone of the linear probe."""
    return PretrainedFeatureExtractor(BACKBONE)


def probe_classifier():
    """The linear probe's classifier, as the baseline is defined."""
    return LogisticRegression(max_iter=1000)
