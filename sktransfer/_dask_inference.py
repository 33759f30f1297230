"""Predict over a Dask collection of image paths, the model sent once per worker.

dask-ml's ``ParallelPostFit`` assumes 2-D feature arrays: on a 1-D array of
paths its output-type probe builds a ``(1, X.shape[1])`` input and fails,
and with the output types given it drops axis 1 of the input and declares
the wrong shape for probabilities. It also runs a Dask DataFrame column in
the client. This module does the same job for image paths: each block of
paths is one task, the fitted estimator is scattered to every worker once
(tasks get the worker's copy, not a pickle each), and the output blocks are
declared with their true shape and dtype.
"""

import numpy as np

__all__ = ["dask_path_array", "dask_predict"]

_METHODS = ("predict", "predict_proba", "transform")


def _output_layout(estimator, method):
    """``(width, dtype)`` of ``method``'s output; width None when 1-D."""
    if method == "transform":
        return estimator.n_features_out_, np.dtype(np.float32)
    if method == "predict_proba":
        return len(estimator.classes_), np.dtype(np.float64)
    if hasattr(estimator, "n_outputs_"):  # the regressor
        width = None if estimator.n_outputs_ == 1 else estimator.n_outputs_
        return width, np.dtype(np.float64)
    if getattr(estimator, "multilabel_", False):
        if getattr(estimator, "sparse_output_", False):
            raise ValueError(
                "This classifier predicts a sparse indicator matrix, which a "
                "dask array cannot hold; use method='predict_proba' and "
                "threshold it, or fit it on a dense indicator matrix."
            )
        return len(estimator.classes_), np.dtype(np.int64)
    return None, estimator.classes_.dtype


def dask_path_array(X, local_hint):
    """``X`` as a 1-D dask array of paths; a DataFrame column gets its lengths.

    ``local_hint`` ends the error for anything else: what to do with a
    local array instead.
    """
    import dask.array as da

    if not hasattr(X, "chunks") and hasattr(X, "to_dask_array"):
        X = X.to_dask_array(lengths=True)
    if not isinstance(X, da.Array) or X.ndim != 1:
        raise TypeError(
            "X must be a 1-D dask array or a dask DataFrame column of image "
            f"paths; got {type(X).__name__}. {local_hint}"
        )
    return X


def _call(paths, estimator, method, dtype):
    out = getattr(estimator, method)(np.asarray(paths, dtype=object))
    return np.asarray(out, dtype=dtype)


def dask_predict(estimator, X, method="predict", *, client=None):
    """Apply a fitted estimator's ``method`` to a Dask collection of paths.

    Parameters
    ----------
    estimator : fitted estimator
        A fitted :class:`PretrainedCNNClassifier`, regressor or
        :class:`PretrainedFeatureExtractor` (or a Pipeline ending in one
        that has the same attributes).
    X : dask.array.Array of shape (n_images,) or dask.dataframe.Series
        Image paths every worker can read. A Series is turned into an
        array with known chunk lengths.
    method : {"predict", "predict_proba", "transform"}
        The estimator's method to run on each block.
    client : distributed.Client or None, default=None
        Where to scatter the model; None uses the current client.

    Returns
    -------
    result : dask.array.Array
        Lazy; ``.compute()`` it. Shape ``(n_images,)`` for ``predict``, else
        ``(n_images, k)``. Blocks follow the chunks of ``X``.

    Examples
    --------
    >>> import dask.array as da  # doctest: +SKIP
    >>> from dask.distributed import Client  # doctest: +SKIP
    >>> from sktransfer import dask_predict  # doctest: +SKIP
    >>> client = Client()  # doctest: +SKIP
    >>> paths = da.from_array(files, chunks=1000)  # doctest: +SKIP
    >>> labels = dask_predict(clf, paths).compute()  # doctest: +SKIP
    """
    try:
        from dask.distributed import get_client
    except ImportError as exc:
        raise ImportError(
            'dask_predict needs Dask: pip install "sktransfer[dask]"'
        ) from exc

    if method not in _METHODS:
        raise ValueError(
            f"method must be one of {_METHODS}; got {method!r}."
        )
    X = dask_path_array(
        X, f"For a local array, call the estimator's {method} directly."
    )
    client = client or get_client()
    width, dtype = _output_layout(estimator, method)
    model = client.scatter(estimator, broadcast=True, hash=False)
    if width is None:
        return X.map_blocks(_call, model, method, dtype, dtype=dtype,
                            meta=np.empty((0,), dtype))
    return X.map_blocks(
        _call, model, method, dtype, dtype=dtype, new_axis=1,
        chunks=(X.chunks[0], (width,)), meta=np.empty((0, 0), dtype),
    )
