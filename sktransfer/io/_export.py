"""Export a fitted network to ONNX or TorchScript, with a JSON sidecar.

The exported file holds the whole network (frozen blocks, trained blocks and
head) in float32 for the CPU, whatever precision and device it was fitted
with, and takes a batch of any size. Its input is either

- ``"uint8"``: RGB images already resized and centre-cropped, ``(N, 3, C, C)``
  ``uint8`` with ``C = preprocessing_.crop_size``; scaling to [0, 1] and the
  normalisation run inside the graph, so a server only resizes and crops; or
- ``"float"``: the normalised ``float32`` tensors the backbone itself takes.

A classifier's graph ends in a softmax and returns class probabilities
(columns in the order of ``classes_``), a feature extractor's returns its
embeddings. Beside ``path`` a sidecar ``<path>.json`` records the input, the
preprocessing, the classes with their dtype, the output and the library
versions; :func:`export_inputs` prepares a model's input from image files
exactly as ``predict_proba`` does.

Both files are written beside their destination, fsynced and renamed into
place, model first; the sidecar, written last, names the model file's
SHA-256, so a model and sidecar from two different exports are told apart.
Before anything is renamed, the written file is loaded back (onnxruntime, or
``torch.jit.load``) and checked against the torch network on batches of one
and two images.
"""

import contextlib
import copy
import dataclasses
import json
import os
import uuid
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from .._data import check_image_paths
from .._images import load_rgb_image
from .._transforms import Preprocessing, crop_transform, eval_transform
from .._warnings import user_stacklevel
from ..backbones._weights import file_sha256
from ._pickle import library_versions
from ._safe_format import _classes_for_json, _fsync_path, _write_synced

__all__ = ["ExportedNetwork", "export_inputs", "export_model", "sidecar_path"]

FORMATS = ("onnx", "torchscript")
INPUT_KINDS = ("uint8", "float")
METADATA_FORMAT = "sktransfer-export"
METADATA_VERSION = 1
INPUT_NAME = "images"
# torch.onnx.export(dynamo=True) with dynamic_shapes and external_data.
_MIN_TORCH_FOR_ONNX = (2, 6)
_ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportedNetwork(nn.Module):
    """The exported graph: input scaling, the network, and its activation.

    Parameters
    ----------
    network : torch.nn.Module
        Maps normalised float32 images ``(N, 3, C, C)`` to logits or
        embeddings.
    preprocessing : Preprocessing
        Mean and standard deviation of the normalisation.
    uint8_input : bool
        Take ``uint8`` images and scale and normalise them as
        ``eval_transform`` does (``x / 255``, then ``(x - mean) / std``).
    activation : {"softmax", "sigmoid"} or None
        ``"softmax"`` over classes (a classifier's probabilities),
        ``"sigmoid"`` per label (a multi-label classifier's), or None
        (embeddings as they are).
    """

    def __init__(self, network, preprocessing, *, uint8_input, activation):
        super().__init__()
        self.network = network
        self.uint8_input = uint8_input
        self.activation = activation
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(shape))
        self.register_buffer("std", torch.tensor(preprocessing.std).view(shape))

    def forward(self, images):
        x = images
        if self.uint8_input:
            # torchvision's ToDtype(scale=True) multiplies by 1/255.
            x = (x.to(torch.float32) * (1.0 / 255.0) - self.mean) / self.std
        out = self.network(x)
        if self.activation == "softmax":
            return torch.softmax(out, dim=1)
        if self.activation == "sigmoid":
            return torch.sigmoid(out)
        return out


def sidecar_path(path):
    """The sidecar JSON of the model file ``path``: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _check_choice(name, value, valid):
    if not isinstance(value, str) or value not in valid:
        raise ValueError(
            f"Unknown {name}={value!r}. Valid values: "
            f"{', '.join(repr(v) for v in valid)}."
        )


def _import_onnx_packages():
    """Import what ONNX export needs, or raise an ImportError naming the extra."""
    for name in _ONNX_PACKAGES:
        try:
            __import__(name)
        except ImportError as exc:
            raise ImportError(
                f"export(format='onnx') needs {name}, which is not installed "
                "(the exporter needs onnx and onnxscript, and onnxruntime checks "
                "the exported file). Install them with "
                "`pip install \"sktransfer[onnx]\"`, or export with "
                "format='torchscript'."
            ) from exc
    found = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if found < _MIN_TORCH_FOR_ONNX:
        needed = ".".join(map(str, _MIN_TORCH_FOR_ONNX))
        raise ImportError(
            f"export(format='onnx') needs torch>={needed} "
            f"(its torch.export-based ONNX exporter); torch {torch.__version__} is "
            "installed. Upgrade torch, or export with format='torchscript'."
        )


def _network_of(est):
    """``(network, output name, output kind, width)`` of a fitted estimator."""
    model = getattr(est, "model_", None)
    if model is not None:  # classifier: frozen prefix, suffix, softmax
        network = nn.Sequential(model.frozen, model.suffix)
        return network, "proba", "probabilities", int(est.n_classes_)
    return est.frozen_, "embeddings", "embeddings", int(est.n_features_out_)


def _activation(est, output_kind):
    """The output activation: what ``predict_proba`` applies to the logits."""
    if output_kind != "probabilities":
        return None
    return "sigmoid" if getattr(est, "multilabel_", False) else "softmax"


def _export_copy(network):
    """A float32, CPU, eval-mode copy: the estimator's own model is untouched."""
    network = copy.deepcopy(network).to("cpu", torch.float32)
    return network.to(memory_format=torch.contiguous_format).eval()


def _example_batch(prep, uint8_input):
    generator = torch.Generator().manual_seed(0)
    shape = (2, prep.channels, prep.crop_size, prep.crop_size)
    if uint8_input:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return torch.randn(shape, generator=generator)


def _write_onnx(graph, example, output_name, tmp):
    _import_onnx_packages()
    # Batch 2 in the example: a dimension of size 1 would be specialised.
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        graph, (example,), str(tmp), dynamo=True, external_data=False,
        input_names=[INPUT_NAME], output_names=[output_name],
        dynamic_shapes={INPUT_NAME: {0: batch}}, verbose=False,
    )


def _run_onnx(tmp):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(tmp), providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0]


@contextlib.contextmanager
def _quiet_jit():
    # torch.jit warns that TorchScript is deprecated at every call; the docs
    # of ``export`` say so once instead.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", category=FutureWarning, module=r"torch\.jit"
        )
        yield


def _write_torchscript(graph, example, output_name, tmp):
    if not hasattr(torch.jit, "trace"):
        raise RuntimeError(
            f"This torch ({torch.__version__}) has no torch.jit.trace, so "
            "format='torchscript' is not available; use format='onnx'."
        )
    with _quiet_jit():
        # check_trace=False: the saved file is checked by _check_written.
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(tmp))


def _run_torchscript(tmp):
    with _quiet_jit():
        loaded = torch.jit.load(str(tmp), map_location="cpu")

    def run(x):
        with torch.no_grad():
            return loaded(x).numpy()

    return run


_WRITERS = {"onnx": (_write_onnx, _run_onnx),
            "torchscript": (_write_torchscript, _run_torchscript)}


def _check_written(run, graph, example, fmt):
    """The file just written must compute what the torch graph computes."""
    for x in (example[:1], example):
        with torch.no_grad():
            expected = graph(x).numpy()
        got = run(x)
        if got.shape != expected.shape or not np.allclose(
            got, expected, rtol=1e-3, atol=1e-4
        ):
            diff = np.abs(got - expected).max() if got.shape == expected.shape else None
            raise RuntimeError(
                f"The exported {fmt} file does not reproduce the network on a "
                f"batch of {len(x)} (shape {got.shape} against {expected.shape}, "
                f"largest difference {diff}); nothing was written. Try the other "
                "format, and please report this with the backbone's name."
            )


def _versions(fmt):
    found = {**library_versions()}
    names = _ONNX_PACKAGES if fmt == "onnx" else ()
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


_MEANINGS = {
    "softmax": "class probabilities (softmax of the logits), one row per image, "
               "columns in the order of classes.values",
    "sigmoid": "per-label probabilities (sigmoid of the logits), one row per "
               "image, columns in the order of classes.values; a label is "
               "predicted where its probability exceeds threshold",
    None: "pooled embedding of each image, one row per image",
}


def _metadata(est, fmt, input_kind, model_path, sha256, output, activation):
    output_name, output_kind, width = output
    prep = est.preprocessing_
    crop = prep.crop_size
    uint8 = input_kind == "uint8"
    where = "model" if uint8 else "server"
    steps = [
        {"step": "load", "where": "server",
         "detail": "EXIF orientation applied, first frame, transparent pixels "
                   "composited on white, 8-bit RGB"
                   + ("" if prep.channels == 3 else ", then luminance (Pillow L)")},
        {"step": "resize", "where": "server",
         "detail": (f"both sides to {prep.resize_size} px (aspect not kept)"
                    if prep.crop_mode == "squash" else
                    f"shorter side to {prep.resize_size} px")
                   + f", {prep.interpolation}, antialiased (Pillow)"},
        {"step": "center_crop", "where": "server",
         "detail": f"{crop} x {crop}, torchvision CenterCrop rounding"},
        {"step": "scale", "where": where, "detail": "float32 x / 255"},
        {"step": "normalize", "where": where, "detail": "(x - mean) / std"},
    ]
    meta = {
        "format": METADATA_FORMAT,
        "format_version": METADATA_VERSION,
        "model_file": model_path.name,
        "model_format": fmt,
        "model_sha256": sha256,
        "estimator": type(est).__name__,
        "backbone": est.backbone,
        "weights_id": est.weights_id_,
        "input": {
            "name": INPUT_NAME,
            "kind": input_kind,
            "dtype": "uint8" if uint8 else "float32",
            "shape": ["batch", prep.channels, crop, crop],
            "layout": "NCHW, RGB" if prep.channels == 3 else "NCHW, luminance",
        },
        "preprocessing": {**prep.to_dict(), "steps": steps},
        "output": {
            "name": output_name,
            "kind": output_kind,
            "dtype": "float32",
            "shape": ["batch", width],
            "meaning": _MEANINGS[activation],
        },
    }
    if output_kind == "probabilities":
        meta["classes"] = _classes_for_json(est.classes_)
        if activation == "sigmoid":
            meta["threshold"] = float(est.threshold)
    fitted = est.frozen_dtype_
    meta["precision"] = "float32"
    meta["fitted_precision"] = (
        "float32" if fitted is None else str(fitted).removeprefix("torch.")
    )
    meta["library_versions"] = _versions(fmt)
    return meta


def _temporary_beside(path):
    return path.with_name(f".{path.name}.exporting-{uuid.uuid4().hex[:12]}")


def export_model(est, path, fmt="onnx", *, input_kind="uint8"):
    """Write ``est``'s network to ``path`` and its sidecar (see module doc)."""
    check_is_fitted(est)
    _check_choice("format", fmt, FORMATS)
    _check_choice("input", input_kind, INPUT_KINDS)
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"Cannot export to {str(path)!r}: it is a directory. Pass the path "
            "of the model file to write, e.g. 'model.onnx'."
        )
    if fmt == "onnx":
        _import_onnx_packages()  # before any work
    if getattr(est, "tta", False) is not False:
        warnings.warn(
            f"The exported model computes one evaluation view per image; "
            f"tta={est.tta!r} is not part of it, so its probabilities are those "
            "of predict_proba with tta=False.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    network, *output = _network_of(est)
    activation = _activation(est, output[1])
    uint8 = input_kind == "uint8"
    graph = ExportedNetwork(
        _export_copy(network), est.preprocessing_, uint8_input=uint8,
        activation=activation,
    ).eval()
    example = _example_batch(est.preprocessing_, uint8)
    write, load = _WRITERS[fmt]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_model, tmp_sidecar = _temporary_beside(path), None
    try:
        write(graph, example, output[0], tmp_model)
        _check_written(load(tmp_model), graph, example, fmt)
        _fsync_path(tmp_model)
        meta = _metadata(
            est, fmt, input_kind, path, file_sha256(tmp_model), output, activation
        )
        tmp_sidecar = _temporary_beside(sidecar_path(path))
        _write_synced(tmp_sidecar, json.dumps(meta, indent=2) + "\n")
        # The model first: the sidecar, renamed last, names its checksum.
        os.replace(tmp_model, path)
        os.replace(tmp_sidecar, sidecar_path(path))
        _fsync_path(path.parent)
    except BaseException:
        for tmp in (tmp_model, tmp_sidecar):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    return path


def _read_metadata(metadata):
    if isinstance(metadata, dict):
        return metadata
    path = Path(metadata)
    if path.suffix != ".json":
        path = sidecar_path(path)
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not the sidecar of an exported sktransfer model "
            f"(no \"format\": \"{METADATA_FORMAT}\"). Pass the model file or "
            "the .json that export() wrote beside it."
        )
    return meta


def export_inputs(X, metadata, *, max_image_pixels=None):
    """Images prepared as the input of an exported model.

    The server-side preprocessing of a model written by
    ``PretrainedCNNClassifier.export`` (or ``PretrainedFeatureExtractor.export``):
    each image is loaded as ``predict_proba`` loads it (EXIF orientation,
    alpha on white, RGB), its shorter side (both sides for
    ``crop_mode="squash"``) resized to ``resize_size`` and the centre
    ``crop_size`` square cut out, with the sidecar's interpolation;
    for ``input="float"`` models it is then scaled and normalised too. The
    exported model's output on this array equals ``predict_proba(X)``.

    Parameters
    ----------
    X : array-like of shape (n_samples,)
        Image file paths.
    metadata : str, path-like or dict
        The exported model file (its sidecar ``<file>.json`` is read), the
        sidecar itself, or the sidecar's contents as a dict.
    max_image_pixels : int or None, default=None
        Refuse larger images (decompression-bomb guard). ``None`` uses
        Pillow's limit.

    Returns
    -------
    images : ndarray of shape (n_samples, 3, crop_size, crop_size)
        ``uint8`` for a model exported with ``input="uint8"``, normalised
        ``float32`` for ``input="float"``.

    See Also
    --------
    PretrainedCNNClassifier.export : Write the model and its sidecar.

    Examples
    --------
    >>> import onnxruntime  # doctest: +SKIP
    >>> from sktransfer import export_inputs
    >>> clf.export("model.onnx")  # doctest: +SKIP
    >>> session = onnxruntime.InferenceSession("model.onnx")  # doctest: +SKIP
    >>> images = export_inputs(paths, "model.onnx")  # doctest: +SKIP
    >>> proba = session.run(None, {"images": images})[0]  # doctest: +SKIP
    """
    meta = _read_metadata(metadata)
    paths = check_image_paths(X)
    fields = [f.name for f in dataclasses.fields(Preprocessing)]
    # Fields a sidecar was written without (intensity, channels, crop_mode in
    # older ones) keep the Preprocessing default, which is what those models
    # did; its other keys ("steps") describe the same for people.
    prep = Preprocessing.from_dict(
        {k: meta["preprocessing"][k] for k in fields if k in meta["preprocessing"]}
    )
    if meta["input"]["kind"] == "uint8":
        transform, dtype = crop_transform(prep), np.uint8
    else:
        transform, dtype = eval_transform(prep), np.float32
    crop = prep.crop_size
    out = np.empty((len(paths), prep.channels, crop, crop), dtype=dtype)
    for i, p in enumerate(paths):
        image = load_rgb_image(
            p, max_image_pixels=max_image_pixels, min_side=prep.resize_size,
            intensity=prep.intensity,
        )
        out[i] = transform(image).numpy()
    return out
