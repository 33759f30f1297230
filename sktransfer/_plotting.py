"""Plots of training curves and confusion matrices (matplotlib, optional)."""

__all__ = ["import_pyplot", "plot_history", "save_confusion_matrix"]


def import_pyplot():
    """``matplotlib.pyplot``, or an ImportError naming the extra to install."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "Plotting needs matplotlib, which is not installed. Install it with "
            "`pip install \"sktransfer[plot]\"` (or `pip install matplotlib`)."
        ) from exc
    return plt


def _column(history, key):
    return [row.get(key) for row in history]


def plot_history(history, ax=None):
    """Training loss, validation loss and validation accuracy per epoch.

    Parameters
    ----------
    history : skorch.History
        One row per epoch, as in ``PretrainedCNNClassifier.history_``.
    ax : matplotlib Axes or None, default=None
        Where to draw the losses; ``None`` makes a new figure. Accuracy,
        when recorded, goes on a second y axis sharing the epochs.

    Returns
    -------
    ax : matplotlib Axes
        The axes holding the loss curves.
    """
    plt = import_pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    epochs = _column(history, "epoch")
    lines = []
    for key, label, style in [("train_loss", "training loss", "-"),
                              ("valid_loss", "validation loss", "--")]:
        values = _column(history, key)
        if any(v is not None for v in values):
            lines += ax.plot(epochs, values, style, marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    accuracy = _column(history, "valid_acc")
    if any(v is not None for v in accuracy):
        acc_ax = ax.twinx()
        lines += acc_ax.plot(epochs, accuracy, ":", marker="s", color="tab:green",
                             label="validation accuracy")
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_ylim(0, 1.02)
    ax.legend(lines, [line.get_label() for line in lines], loc="best")
    ax.set_title("Training history")
    return ax


def save_confusion_matrix(y_true, y_pred, labels, path):
    """Draw the confusion matrix of a prediction and write it to ``path``."""
    plt = import_pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    display = ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, xticks_rotation="vertical"
    )
    display.figure_.tight_layout()
    display.figure_.savefig(path)
    plt.close(display.figure_)
