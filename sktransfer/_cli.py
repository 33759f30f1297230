"""The ``sktransfer`` command: fit, predict, evaluate and list backbones.

Every sub-command is a thin layer over the public API, and the options of
``fit`` carry the names and defaults of ``PretrainedCNNClassifier``'s
parameters. Mistakes in the input (a missing folder, an unknown backbone or
device, a bad image, weights that cannot be downloaded, a full disk) end with
one line on stderr and a non-zero exit status rather than a traceback.
"""

import argparse
import csv
import errno
import io
import json
import os
import shutil
import sys
import warnings

__all__ = ["main"]

class CLIError(Exception):
    """A mistake in the command's input, reported as one line."""


# -- models on disk -------------------------------------------------------

def _snapshot(folder):
    """``{name: (inode, size, mtime)}`` of the files directly in ``folder``."""
    if not os.path.isdir(folder):
        return {}
    return {
        entry.name: (st.st_ino, st.st_size, st.st_mtime_ns)
        for entry in os.scandir(folder)
        if entry.is_file() and (st := entry.stat())
    }


def check_out_folder(folder, force):
    """Refuse, before any training, an ``--out`` that holds other files."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CLIError(
            f"--out {folder!r} is a file; the model is saved as a folder. "
            "Choose a new folder."
        )
    if os.path.isdir(folder) and any(os.scandir(folder)) and not force:
        raise CLIError(
            f"--out folder {folder!r} is not empty. Choose a new or empty "
            "folder, or pass --force to write the model into it (files of "
            "the same name are replaced)."
        )


def save_model(clf, folder):
    """Write a fitted classifier into ``folder`` in the pickle-free format.

    Returns the names of the files written. A folder this call created is
    removed again if saving fails, so no half-written model is left behind.
    """
    created = not os.path.exists(folder)
    before = _snapshot(folder)
    try:
        clf.save(folder)
    except OSError as exc:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        left = ("nothing was left there" if created else
                "the folder may hold a partly written model")
        if exc.errno == errno.ENOSPC:
            raise CLIError(
                f"No space left on the device to save the model to {folder!r}; "
                f"{left}. Free some space or pass another --out."
            ) from exc
        raise CLIError(
            f"Could not save the model to {folder!r} ({exc}); {left}."
        ) from exc
    after = _snapshot(folder)
    return sorted(name for name, info in after.items() if before.get(name) != info)


def load_model(folder):
    """Read the classifier that :func:`save_model` wrote into ``folder``."""
    from . import PretrainedCNNClassifier

    if not os.path.isdir(folder):
        raise CLIError(
            f"Model folder {folder!r} does not exist. Pass the --out folder of "
            "`sktransfer fit`."
        )
    clf = PretrainedCNNClassifier.load(folder)
    if getattr(clf, "multilabel_", False):
        raise CLIError(
            f"Model folder {folder!r} holds a multi-label classifier; the "
            "command line predicts and evaluates single-label models only. "
            "Load it in Python with PretrainedCNNClassifier.load."
        )
    return clf


# -- inputs ---------------------------------------------------------------

def _load_folder(folder):
    from . import load_image_folder

    return load_image_folder(folder)


def _collect_images(items):
    """Files as given; folders expanded to their image files, recursively,
    by the walker that ``load_image_folder`` uses (the same skipped files)."""
    from ._folder import list_images

    return list_images(items)


def _path(value):
    """A path argument with ``~`` expanded, as a shell does only at a word's start."""
    return os.path.expanduser(value)


def _weights(value):
    return None if value.lower() == "none" else os.path.expanduser(value)


def check_device(value):
    """Fail early, in one line, on a device this machine does not have."""
    from ._runtime import check_device as check

    try:
        check(value)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _unfreeze(value):
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a number of blocks or 'all', got {value!r}"
        ) from None


# -- sub-commands -----------------------------------------------------------

def _say(args, message):
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def cmd_backbones(args):
    from . import list_backbones

    for info in list_backbones(include=args.family, details=True):
        size = "?" if info.input_size is None else f"{info.input_size} px"
        offline = {True: "weights offline", False: "weights to download",
                   None: "weights: unknown"}[info.offline_weights]
        print(f"{info.name:<22} {info.family:<18} {info.n_blocks:>2} blocks "
              f"{size:>7}  {offline}")
    return 0


def cmd_fit(args):
    from . import PretrainedCNNClassifier, get_backbone

    # Mistakes that need no data fail before any work.
    get_backbone(args.backbone)
    check_device(args.device)
    check_out_folder(args.out, args.force)
    paths, labels = _load_folder(args.data_dir)
    classes = sorted(set(labels))
    _say(args, f"Found {len(paths)} images in {len(classes)} classes: "
               f"{', '.join(classes)}")
    clf = PretrainedCNNClassifier(
        backbone=args.backbone,
        weights=_weights(args.weights),
        unfreeze=args.unfreeze,
        max_epochs=args.max_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        image_size=args.image_size,
        augment=args.augment,
        early_stopping=args.early_stopping,
        validation_fraction=args.validation_fraction,
        n_iter_no_change=args.n_iter_no_change,
        class_weight=args.class_weight,
        precision=args.precision,
        device=args.device,
        cache=args.cache or "auto",
        on_bad_image=args.on_bad_image,
        random_state=args.random_state,
        verbose=0 if args.quiet else 1,
    )
    stopping = (f", early stopping on {args.validation_fraction:g} of the images"
                if args.early_stopping else "")
    _say(args, f"Training {args.backbone} (weights={args.weights}, "
               f"unfreeze={args.unfreeze}) for up to {args.max_epochs} epochs"
               f"{stopping}")
    clf.fit(paths, labels)
    written = save_model(clf, args.out)
    _say(args, f"Saved the model to {args.out}: {', '.join(written)}")
    return 0


def _write_predictions(args, paths, clf):
    if args.proba:
        proba = clf.predict_proba(paths)
        predictions = clf.classes_[proba.argmax(axis=1)]
    else:
        proba, predictions = None, clf.predict(paths)
    classes = [str(c) for c in clf.classes_]
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        if args.format == "json":
            records = []
            for i, path in enumerate(paths):
                record = {"path": path, "prediction": str(predictions[i])}
                if proba is not None:
                    record["proba"] = dict(zip(classes, proba[i].round(6).tolist()))
                records.append(record)
            json.dump(records, out, indent=2)
            out.write("\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            header = ["path", "prediction"]
            writer.writerow(header + ([f"proba_{c}" for c in classes]
                                      if proba is not None else []))
            for i, path in enumerate(paths):
                row = [path, predictions[i]]
                if proba is not None:
                    row += [f"{p:.6f}" for p in proba[i]]
                writer.writerow(row)
    finally:
        if out is not sys.stdout:
            out.close()


def cmd_predict(args):
    clf = load_model(args.model_dir)
    paths = _collect_images(args.images)
    _say(args, f"Predicting {len(paths)} images with {args.model_dir}")
    clf.set_params(verbose=0 if args.quiet else 1)
    _write_predictions(args, paths, clf)
    if args.output:
        _say(args, f"Wrote the predictions to {args.output}")
    return 0


def cmd_evaluate(args):
    import numpy as np
    from sklearn.metrics import accuracy_score, classification_report

    clf = load_model(args.model_dir)
    paths, labels = _load_folder(args.data_dir)
    unknown = sorted(set(labels) - {str(c) for c in clf.classes_})
    if unknown:
        raise CLIError(
            f"Class folder(s) {unknown} in {args.data_dir!r} are not classes of "
            f"the model ({[str(c) for c in clf.classes_]})."
        )
    # Folder names are strings; the model's classes keep the type they were
    # fitted with (0 and 1, say), so compare in the model's labels.
    as_class = {str(c): c for c in clf.classes_}
    labels = np.array([as_class[label] for label in labels], dtype=clf.classes_.dtype)
    _say(args, f"Evaluating on {len(paths)} images")
    clf.set_params(verbose=0 if args.quiet else 1)
    predicted = clf.predict(paths)
    print(f"accuracy: {accuracy_score(labels, predicted):.4f}")
    print(classification_report(labels, predicted, labels=clf.classes_,
                                target_names=[str(c) for c in clf.classes_],
                                zero_division=0))
    if args.confusion_matrix:
        from ._plotting import save_confusion_matrix

        save_confusion_matrix(labels, predicted, clf.classes_, args.confusion_matrix)
        _say(args, f"Saved the confusion matrix to {args.confusion_matrix}")
    return 0


# -- argument parsing -----------------------------------------------------

def build_parser():
    from ._version import __version__

    parser = argparse.ArgumentParser(
        prog="sktransfer",
        description="Transfer learning on image folders with pretrained CNNs.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true",
                       help="print no progress, only results")

    fit = sub.add_parser(
        "fit", parents=[quiet], help="train a classifier on DATA_DIR",
        description="Train on DATA_DIR, which holds one sub-folder of images "
                    "per class, and save the model to --out.",
    )
    fit.add_argument("data_dir", metavar="DATA_DIR", type=_path)
    fit.add_argument("--out", required=True, metavar="MODEL_DIR", type=_path,
                     help="new or empty folder to save the model in")
    fit.add_argument("--force", action="store_true",
                     help="write the model into a --out folder that is not empty")
    fit.add_argument("--backbone", default="resnet50",
                     help="see `sktransfer backbones` (default: resnet50)")
    fit.add_argument("--weights", default="DEFAULT",
                     help="DEFAULT, a weights name, a state-dict file, or none "
                          "for random initialisation (default: DEFAULT)")
    fit.add_argument("--unfreeze", type=_unfreeze, default=0, metavar="K",
                     help="last backbone blocks to train, or 'all' (default: 0)")
    fit.add_argument("--max-epochs", type=int, default=10,
                     help="passes over the data (default: 10)")
    fit.add_argument("--lr", type=float, default=1e-3, help="(default: 0.001)")
    fit.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    fit.add_argument("--image-size", type=int, default=None,
                     help="crop side in pixels (default: that of the weights)")
    fit.add_argument("--augment", action="store_true",
                     help="random crops and flips while training")
    fit.add_argument("--class-weight", choices=["balanced"], default=None,
                     help="weigh classes inversely to their frequency "
                          "(default: every class weighs 1)")
    fit.add_argument("--early-stopping", action="store_true",
                     help="hold out --validation-fraction of the images and stop "
                          "when the validation loss stops improving")
    fit.add_argument("--validation-fraction", type=float, default=0.1,
                     help="with --early-stopping, the fraction held out "
                          "(default: 0.1)")
    fit.add_argument("--n-iter-no-change", type=int, default=5,
                     help="with --early-stopping, epochs without improvement "
                          "before stopping (default: 5)")
    fit.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                     default="auto",
                     help="of the frozen backbone's forward passes (default: auto)")
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    fit.add_argument("--cache", default=None, metavar="DIR", type=_path,
                     help="also cache backbone features on disk in DIR")
    fit.add_argument("--on-bad-image", choices=["raise", "skip"], default="raise",
                     help="stop at unusable image files, or skip them")
    fit.add_argument("--random-state", type=int, default=None,
                     help="seed, for runs that repeat (default: none)")
    fit.set_defaults(run=cmd_fit)

    predict = sub.add_parser(
        "predict", parents=[quiet], help="predict the class of images",
        description="Predict the class of image files and of the images in "
                    "folders (searched recursively).",
    )
    predict.add_argument("model_dir", metavar="MODEL_DIR", type=_path)
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR", type=_path)
    predict.add_argument("--proba", action="store_true",
                         help="also print the probability of every class")
    predict.add_argument("--format", choices=["csv", "json"], default="csv")
    predict.add_argument("--output", metavar="FILE", type=_path,
                         help="write to FILE instead of standard output")
    predict.set_defaults(run=cmd_predict)

    evaluate = sub.add_parser(
        "evaluate", parents=[quiet], help="score a model on a labelled folder",
        description="Accuracy and per-class report on DATA_DIR (one sub-folder "
                    "per class).",
    )
    evaluate.add_argument("model_dir", metavar="MODEL_DIR", type=_path)
    evaluate.add_argument("data_dir", metavar="DATA_DIR", type=_path)
    evaluate.add_argument("--confusion-matrix", metavar="FILE.png", type=_path,
                          help="save a confusion-matrix plot (needs matplotlib)")
    evaluate.set_defaults(run=cmd_evaluate)

    backbones = sub.add_parser("backbones", help="list the available backbones")
    backbones.add_argument("--family", action="append",
                           help="only this family (repeatable)")
    backbones.set_defaults(run=cmd_backbones)
    return parser


def _one_line(exc):
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines) or type(exc).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"sktransfer: warning: {_one_line(message)}", file=sys.stderr)


def main(argv=None):
    """Run the ``sktransfer`` command; return its exit status.

    Parameters
    ----------
    argv : list of str or None, default=None
        Arguments after the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 for an error in the input, 2 for a usage error,
        130 when interrupted.

    Examples
    --------
    >>> from sktransfer._cli import main
    >>> main(["backbones", "--family", "resnet"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.run(args)
        except KeyboardInterrupt:
            print("sktransfer: interrupted", file=sys.stderr)
            return 130
        # RuntimeError: what the library raises for weights that cannot be
        # downloaded or read, and torch for a device it cannot use.
        except (CLIError, ValueError, TypeError, OSError, ImportError,
                RuntimeError) as exc:
            print(f"sktransfer: error: {_one_line(exc)}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    # Line-buffered output keeps progress and results in order in a pipe.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
