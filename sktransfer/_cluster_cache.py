"""Compute the frozen features of a fit ahead of it, anywhere, into the cache.

A fit spends most of its time running the frozen prefix over every image
once; training the head or the last blocks then reads those features from
the feature cache. With ``cache=`` a directory that every worker and the
fitting process can read, the extraction can run elsewhere first:
:func:`cache_features` builds the frozen prefix the fit would build (the
same backbone, seed, preprocessing and precision, hence the same cache
key), runs it over some paths and writes their features into the shared
directory. Any engine can call it on blocks of paths (Ray, joblib, a batch
scheduler); :func:`dask_cache_features` does so on a Dask cluster. ``fit``
then finds every image there and only trains.

The prefix is built once per process for one estimator object and
precision, not once per call, so a worker that keeps the estimator (a Dask
worker given it by ``scatter``, a Ray actor) builds it once for all its
blocks.
"""

import dataclasses
import functools

import numpy as np
from sklearn.base import clone

from ._cache import DiskFeatureStore, stores_for
from ._dask_inference import dask_path_array
from ._frozen import extract_features
from ._runtime import PRECISIONS
from ._sources import as_image_sources

__all__ = ["cache_features", "dask_cache_features"]


def _precision_name(dtype):
    return next(name for name, value in PRECISIONS.items() if value == dtype)


def _disk_store(estimator):
    disk = [s for s in stores_for(estimator.cache) if isinstance(s, DiskFeatureStore)]
    if not disk:
        raise ValueError(
            "Features computed ahead of a fit are written where the fit reads "
            "them, so the estimator needs cache= a directory that every worker "
            f"and the fitting process share; got cache={estimator.cache!r}."
        )
    return disk[0]


def _check_uses_cache(estimator):
    if not estimator._uses_feature_cache():
        raise ValueError(
            f"With augment={estimator.augment!r}, fit computes new views of "
            "each image every epoch and does not read the feature cache; "
            "computing features ahead only helps fits with augment=False."
        )


def _built_pass(estimator, precision):
    """The frozen pass a fit of ``estimator`` would run here, in ``precision``.

    Refuses, before building anything, an estimator whose fit would not read
    what it writes.
    """
    store = _disk_store(estimator)
    _check_uses_cache(estimator)
    local = clone(estimator)
    if precision is not None:
        local.set_params(precision=precision)
    frozen_pass = local._fit_frozen_pass()
    if frozen_pass.cache_key is None:
        raise ValueError(
            "With weights=None and random_state=None every build draws other "
            "random weights, so their features are never cached; set an int "
            "random_state."
        )
    # The disk store only: the process-wide memory store would keep every
    # block's features here for nothing.
    return dataclasses.replace(frozen_pass, stores=(store,))


@functools.lru_cache(maxsize=4)
def _worker_pass(estimator, precision):
    """:func:`_built_pass`, built once per estimator object and precision."""
    return _built_pass(estimator, precision)


def _write_features(estimator, paths, precision):
    """Features of ``paths`` into the cache; ``(index, reason)`` of failures."""
    _, errors = extract_features(
        _worker_pass(estimator, precision), paths, max_bytes=None
    )
    return errors


def cache_features(estimator, X, *, precision=None):
    """Write the frozen features a fit of ``estimator`` needs for ``X`` to its cache.

    The engine-agnostic step of :func:`dask_cache_features`: call it on
    blocks of paths from any worker (a Ray task or actor, a joblib job, a
    batch job) that sees the estimator's cache directory; a later
    ``estimator.fit`` on those images reads their features instead of
    running the frozen part. Images already in the cache are skipped.

    Parameters
    ----------
    estimator : PretrainedCNNClassifier or PretrainedCNNRegressor
        Unfitted (its parameters are what counts), with ``cache=`` a
        directory and ``augment=False``; random weights (``weights=None``)
        need an int ``random_state``.
    X : array-like of shape (n_images,)
        Image paths.
    precision : {"fp32", "bf16", "fp16"} or None, default=None
        Precision to run in; None resolves the estimator's own ``precision``
        on this machine. The fit finds the features only if it runs in the
        same one: give the one the fitting machine uses when the two differ
        (``"auto"`` is bf16 on some CPUs and all recent GPUs, float32 on
        other CPUs).

    Returns
    -------
    errors : list of (str, str)
        ``(path, reason)`` of every image that could not be read.

    Examples
    --------
    >>> from sktransfer import PretrainedCNNClassifier, cache_features
    >>> clf = PretrainedCNNClassifier("resnet50", cache="/shared/features")
    >>> errors = cache_features(clf, block_of_paths)  # doctest: +SKIP
    """
    paths = np.asarray(X, dtype=object)
    errors = _write_features(estimator, paths, precision)
    return [(str(paths[i]), reason) for i, reason in errors]


def _extract_block(paths, estimator, precision, expected_key):
    if _worker_pass(estimator, precision).cache_key != expected_key:
        raise RuntimeError(
            "A worker builds a different frozen part than this process (its "
            "feature-cache key differs), so fit would not find its features. "
            "Use the same versions of sktransfer, torch, torchvision and timm, "
            "and the same weights files, on every worker."
        )
    reasons = np.full(len(paths), "", dtype=object)
    for i, reason in _write_features(estimator, np.asarray(paths, dtype=object),
                                     precision):
        reasons[i] = reason
    return reasons


def dask_cache_features(estimator, X, *, client=None):
    """Compute the frozen features a fit needs on a Dask cluster, into the cache.

    Each worker builds the frozen part that ``estimator.fit`` would build
    and writes the features of its blocks of ``X`` into the estimator's
    disk cache; a later ``estimator.fit(X, y)`` (in this process or
    anywhere that sees the same directory) reads them instead of running
    the frozen part. Workers run in the precision this process would fit
    in, so that their features carry the key the fit looks up.

    Parameters
    ----------
    estimator : PretrainedCNNClassifier or PretrainedCNNRegressor
        Unfitted (its parameters are what counts), with ``cache=`` a
        directory every worker and this process can read and write, and
        ``augment=False``. Random weights (``weights=None``) need an int
        ``random_state``, so that every worker builds the same ones.
    X : dask.array.Array of shape (n_images,) or dask.dataframe.Series
        Image paths every worker can read, in blocks of a size whose
        features fit in a worker's memory.
    client : distributed.Client or None, default=None
        The cluster; None uses the current client.

    Returns
    -------
    errors : list of (str, str)
        ``(path, reason)`` of every image that could not be read; ``fit``
        reports them again under its ``on_bad_image`` policy.

    Raises
    ------
    ValueError
        When the estimator has no disk cache, fits with augmentation, or has
        random weights without a seed (nothing would be cached).
    RuntimeError
        When a worker builds a frozen part with another cache key (different
        library versions or weights files), or when this process cannot see
        what the workers wrote (the directory is not shared).

    Examples
    --------
    >>> import dask.array as da  # doctest: +SKIP
    >>> from dask.distributed import Client  # doctest: +SKIP
    >>> from sktransfer import PretrainedCNNClassifier, dask_cache_features
    >>> client = Client("scheduler:8786")  # doctest: +SKIP
    >>> clf = PretrainedCNNClassifier("resnet50", cache="/shared/features")
    >>> paths = da.from_array(files, chunks=2000)  # doctest: +SKIP
    >>> errors = dask_cache_features(clf, paths)  # doctest: +SKIP
    >>> clf.fit(files, labels)  # reads the cache  # doctest: +SKIP
    """
    try:
        import dask
        from dask.distributed import get_client
    except ImportError as exc:
        raise ImportError(
            'dask_cache_features needs Dask: pip install "sktransfer[dask]"'
        ) from exc

    X = dask_path_array(
        X, "For a local array, use cache_features, or fit directly."
    )
    # The pass this process would fit with: its precision and cache key.
    local_pass = _built_pass(estimator, None)
    (store,) = local_pass.stores
    precision = _precision_name(local_pass.dtype)
    client = client or get_client()
    model = client.scatter(clone(estimator), broadcast=True, hash=False)
    reasons = X.map_blocks(
        _extract_block, model, precision, local_pass.cache_key,
        dtype=object, meta=np.empty((0,), dtype=object),
    )
    paths, reasons = dask.compute(X, reasons)
    errors = [(str(p), r) for p, r in zip(paths, reasons) if r]
    _check_visible(store, local_pass, paths, reasons)
    return errors


def _check_visible(store, frozen_pass, paths, reasons):
    """Raise when this process does not see a feature the workers wrote."""
    first = next((i for i, r in enumerate(reasons) if not r), None)
    if first is None:
        return
    sources = as_image_sources(np.asarray(paths[first:first + 1], dtype=object))
    if store.get(frozen_pass.cache_key, sources.fingerprints()[0]) is None:
        raise RuntimeError(
            f"The workers wrote the features into {str(store.directory)!r}, but this "
            "process does not find them there: cache= must be a directory that "
            "every worker and this process share (the same path on each)."
        )
