"""The ``sktransfer`` command: fit, predict, evaluate and list backbones.

Every sub-command is a thin layer over the public API; mistakes in the input
(a missing folder, an unknown backbone, a bad image) end with one line on
stderr and a non-zero exit status rather than a traceback.
"""

import argparse
import csv
import io
import json
import os
import sys
import warnings

__all__ = ["main"]

class CLIError(Exception):
    """A mistake in the command's input, reported as one line."""


# -- models on disk -------------------------------------------------------

def save_model(clf, folder):
    """Write a fitted classifier into ``folder`` in the pickle-free format."""
    clf.save(folder)


def load_model(folder):
    """Read the classifier that :func:`save_model` wrote into ``folder``."""
    from . import PretrainedCNNClassifier

    if not os.path.isdir(folder):
        raise CLIError(
            f"Model folder {folder!r} does not exist. Pass the --out folder of "
            "`sktransfer fit`."
        )
    return PretrainedCNNClassifier.load(folder)


# -- inputs ---------------------------------------------------------------

def _load_folder(folder):
    from . import load_image_folder

    return load_image_folder(folder)


def _collect_images(items):
    """Files as given; folders expanded to their image files, recursively."""
    from ._folder import IMAGE_EXTENSIONS

    paths = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(dirpath, name)
                for dirpath, dirnames, names in os.walk(item)
                for name in names
                if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
            )
            if not found:
                raise CLIError(f"Folder {item!r} contains no image files.")
            paths += found
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise CLIError(f"Image or folder {item!r} does not exist.")
    return paths


def _weights(value):
    return None if value.lower() == "none" else value


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
    from . import get_backbone, list_backbones

    for name in list_backbones(include=args.family):
        spec = get_backbone(name)
        print(f"{name:<22} {spec.family:<14} {spec.n_blocks} blocks")
    return 0


def cmd_fit(args):
    from . import PretrainedCNNClassifier, get_backbone

    get_backbone(args.backbone)  # an unknown name fails before any work
    paths, labels = _load_folder(args.data_dir)
    classes = sorted(set(labels))
    _say(args, f"Found {len(paths)} images in {len(classes)} classes: "
               f"{', '.join(classes)}")
    clf = PretrainedCNNClassifier(
        backbone=args.backbone,
        weights=_weights(args.weights),
        unfreeze=args.unfreeze,
        max_epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        image_size=args.image_size,
        validation_fraction=args.validation_fraction,
        augment=args.augment,
        device=args.device,
        cache=args.cache or "auto",
        on_bad_image=args.on_bad_image,
        random_state=args.seed,
        verbose=0 if args.quiet else 1,
    )
    _say(args, f"Training {args.backbone} (weights={args.weights}, "
               f"unfreeze={args.unfreeze}) for {args.epochs} epochs")
    clf.fit(paths, labels)
    save_model(clf, args.out)
    _say(args, f"Saved the model to {args.out}")
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
    return 0


def cmd_evaluate(args):
    from sklearn.metrics import accuracy_score, classification_report

    clf = load_model(args.model_dir)
    paths, labels = _load_folder(args.data_dir)
    unknown = sorted(set(labels) - {str(c) for c in clf.classes_})
    if unknown:
        raise CLIError(
            f"Class folder(s) {unknown} in {args.data_dir!r} are not classes of "
            f"the model ({[str(c) for c in clf.classes_]})."
        )
    _say(args, f"Evaluating on {len(paths)} images")
    clf.set_params(verbose=0 if args.quiet else 1)
    predicted = clf.predict(paths)
    print(f"accuracy: {accuracy_score(labels, predicted):.4f}")
    print(classification_report(labels, predicted, labels=clf.classes_,
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
    fit.add_argument("data_dir", metavar="DATA_DIR")
    fit.add_argument("--out", required=True, metavar="MODEL_DIR",
                     help="folder to save the model in")
    fit.add_argument("--backbone", default="resnet50",
                     help="see `sktransfer backbones` (default: resnet50)")
    fit.add_argument("--weights", default="DEFAULT",
                     help="DEFAULT, a weights name, a state-dict file, or none "
                          "for random initialisation (default: DEFAULT)")
    fit.add_argument("--unfreeze", type=_unfreeze, default=0, metavar="K",
                     help="last backbone blocks to train, or 'all' (default: 0)")
    fit.add_argument("--epochs", type=int, default=10, help="(default: 10)")
    fit.add_argument("--lr", type=float, default=1e-3, help="(default: 0.001)")
    fit.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    fit.add_argument("--image-size", type=int, default=None,
                     help="crop side in pixels (default: that of the weights)")
    fit.add_argument("--validation-fraction", type=float, default=None,
                     help="hold out this fraction to report validation scores")
    fit.add_argument("--augment", action="store_true",
                     help="random crops and flips while training")
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    fit.add_argument("--cache", default=None, metavar="DIR",
                     help="also cache backbone features on disk in DIR")
    fit.add_argument("--on-bad-image", choices=["raise", "skip"], default="raise",
                     help="stop at unusable image files, or skip them")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    fit.set_defaults(run=cmd_fit)

    predict = sub.add_parser(
        "predict", parents=[quiet], help="predict the class of images",
        description="Predict the class of image files and of the images in "
                    "folders (searched recursively).",
    )
    predict.add_argument("model_dir", metavar="MODEL_DIR")
    predict.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    predict.add_argument("--proba", action="store_true",
                         help="also print the probability of every class")
    predict.add_argument("--format", choices=["csv", "json"], default="csv")
    predict.add_argument("--output", metavar="FILE",
                         help="write to FILE instead of standard output")
    predict.set_defaults(run=cmd_predict)

    evaluate = sub.add_parser(
        "evaluate", parents=[quiet], help="score a model on a labelled folder",
        description="Accuracy and per-class report on DATA_DIR (one sub-folder "
                    "per class).",
    )
    evaluate.add_argument("model_dir", metavar="MODEL_DIR")
    evaluate.add_argument("data_dir", metavar="DATA_DIR")
    evaluate.add_argument("--confusion-matrix", metavar="FILE.png",
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
        except (CLIError, ValueError, TypeError, OSError, ImportError) as exc:
            print(f"sktransfer: error: {_one_line(exc)}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    # Line-buffered output keeps progress and results in order in a pipe.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
