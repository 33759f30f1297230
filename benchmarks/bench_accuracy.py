"""Accuracy of the classifier's recipes on real images (``make bench-accuracy``).

For each dataset, every row of ``_accuracy_rows.ROWS`` is fitted on the
training folds of a seeded 3-fold ``StratifiedKFold`` and scored on the test
fold. Emoji datasets are also scored on the *same* test emoji drawn in other
designs (e.g. trained on Noto, tested on Twemoji): the split is made on the
emoji, so the gap between the two columns is the cost of the change of design
alone. All rows run in one process; the in-memory feature cache is emptied
before each row, so every row starts cold, as a user's session would, and
its folds and search candidates then share the cache as they do there.

Usage::

    python benchmarks/bench_accuracy.py [--datasets noto,fluent3d,tuxpaint]
        [--rows NAME,...] [--quick] [--data-dir DIR] [--out results.json]

Packages are fetched once into ``--data-dir`` (see accuracy_datasets.py);
the library itself never downloads anything.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import warnings

import numpy as np
from _accuracy_fetch import default_data_dir
from _accuracy_report import (
    accuracy_table,
    check_targets,
    checks_text,
    fit_time_table,
    sources_table,
)
from _accuracy_rows import (
    BACKBONE,
    ROWS,
    SEED,
    missing_parameters,
    probe_classifier,
    probe_extractor,
)
from accuracy_datasets import load_emoji_designs, load_tuxpaint
from sklearn.metrics import accuracy_score
from sklearn.model_selection import StratifiedKFold
from sklearn.utils._param_validation import InvalidParameterError

from sktransfer import clear_feature_cache

# dataset name -> (training set, other sets scored on the same test items)
DATASETS = {
    "noto": ("noto", ("twemoji", "fluent3d")),
    "fluent3d": ("fluent3d", ("noto",)),
    "tuxpaint": ("tuxpaint", ()),
    "twemoji": ("twemoji", ("noto",)),
}
DEFAULT_DATASETS = ("noto", "fluent3d", "tuxpaint")
N_FOLDS = 3


def log(message):
    print(message, file=sys.stderr, flush=True)


def load_sets(names, data_dir):
    needed = {DATASETS[n][0] for n in names}
    needed |= {s for n in names for s in DATASETS[n][1]}
    sets = {}
    if needed - {"tuxpaint"}:
        sets.update(load_emoji_designs(data_dir))
    if "tuxpaint" in needed:
        sets["tuxpaint"] = load_tuxpaint(data_dir)
    return {name: sets[name] for name in sorted(needed)}


def column_name(train, test):
    return train if train == test else f"{train}→{test}"


def folds(images, quick):
    cv = StratifiedKFold(N_FOLDS, shuffle=True, random_state=SEED)
    splits = list(cv.split(images.paths, images.labels))
    return splits[:1] if quick else splits


class Recorder:
    """Collects one row's accuracies, fit times and warnings."""

    def __init__(self, entry):
        self.entry = entry
        entry.setdefault("status", "ok")
        for key in ("accuracy", "fit_s"):
            entry.setdefault(key, {})
        entry.setdefault("warnings", [])

    def add(self, column, accuracy):
        self.entry["accuracy"].setdefault(column, []).append(float(accuracy))

    def fit_time(self, train, seconds):
        self.entry["fit_s"].setdefault(train, []).append(float(seconds))

    def caught(self, records):
        for w in records:
            text = f"{w.category.__name__}: {str(w.message)[:300]}"
            if text not in self.entry["warnings"]:
                self.entry["warnings"].append(text)


def run_probe(rec, train, tests, splits):
    start = time.perf_counter()
    extractor = probe_extractor().fit(train.paths)
    features = extractor.transform(train.paths)
    rec.entry.setdefault("extract_s", {})[train.name] = time.perf_counter() - start
    others = {t.name: extractor.transform(t.paths) for t in tests}
    for i, (tr, te) in enumerate(splits):
        lr = probe_classifier()
        start = time.perf_counter()
        lr.fit(features[tr], train.labels[tr])
        rec.fit_time(train.name, time.perf_counter() - start)
        rec.add(train.name, accuracy_score(train.labels[te], lr.predict(features[te])))
        for name, feats in others.items():
            acc = accuracy_score(train.labels[te], lr.predict(feats[te]))
            rec.add(column_name(train.name, name), acc)
        log(f"  fold {i + 1}: acc {rec.entry['accuracy'][train.name][-1]:.3f}, "
            f"LR fit {rec.entry['fit_s'][train.name][-1]:.2f} s")


def run_estimator(row, rec, train, tests, splits):
    for i, (tr, te) in enumerate(splits):
        est = row.estimator()
        start = time.perf_counter()
        try:
            est.fit(train.paths[tr], train.labels[tr])
        except InvalidParameterError as exc:
            # The parameter exists but not with this value: the recipe is
            # not available in this version, as with a missing parameter.
            rec.entry["status"] = f"n/a (parameter rejected: {str(exc)[:120]})"
            return
        rec.fit_time(train.name, time.perf_counter() - start)
        rec.add(train.name, est.score(train.paths[te], train.labels[te]))
        for t in tests:
            acc = est.score(t.paths[te], t.labels[te])
            rec.add(column_name(train.name, t.name), acc)
        if row.grid is not None:
            rec.entry.setdefault("best_params", {}).setdefault(train.name, []).append(
                {k: v for k, v in est.best_params_.items()}
            )
        log(f"  fold {i + 1}: acc {rec.entry['accuracy'][train.name][-1]:.3f}, "
            f"fit {rec.entry['fit_s'][train.name][-1]:.1f} s")


def run_dataset(name, sets, rows, results, quick):
    train_name, test_names = DATASETS[name]
    train, tests = sets[train_name], [sets[t] for t in test_names]
    for t in tests:
        # Shifted test sets must hold the same items, in the same order.
        assert np.array_equal(t.keys, train.keys) and np.array_equal(
            t.labels, train.labels
        ), f"{t.name} is not aligned with {train.name}"
    for t in [train] + tests:
        column = column_name(train.name, t.name)
        results["columns"].append({"name": column, "train": train.name, "test": t.name})
    splits = folds(train, quick)
    for row in rows:
        entry = results["rows"].setdefault(row.name, {})
        rec = Recorder(entry)
        missing = missing_parameters(row)
        if missing:
            entry["status"] = f"n/a (parameter missing: {', '.join(missing)})"
        if entry["status"] != "ok":
            log(f"[{train.name}] {row.name}: {entry['status']}")
            continue
        log(f"[{train.name}] {row.name}")
        clear_feature_cache()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if row.probe:
                run_probe(rec, train, tests, splits)
            else:
                run_estimator(row, rec, train, tests, splits)
        rec.caught(caught)
        entry.setdefault("wall_s", {})[train.name] = time.perf_counter() - start


def _git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine():
    import sklearn
    import torch

    import sktransfer

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "sktransfer": sktransfer.__version__,
        "sktransfer_commit": _git_commit(),
        "backbone": BACKBONE,
        # Other work on the machine slows fits several-fold: record it.
        "load_average_start": _load_average(),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                        help=f"comma-separated, from {', '.join(DATASETS)}")
    parser.add_argument("--rows", default=None,
                        help="comma-separated row names (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="first fold only and the rows marked quick")
    parser.add_argument("--data-dir", default=None,
                        help=f"package and image cache (default {default_data_dir()})")
    parser.add_argument("--out", default=None, help="write the results as JSON")
    parser.add_argument("--report", default=None, metavar="RESULTS_JSON",
                        help="print the tables and checks of a saved run, "
                             "with the current checks, and exit")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    rows = [r for r in ROWS if r.quick] if args.quick else list(ROWS)
    if args.rows:
        names = [n.strip() for n in args.rows.split(",")]
        unknown = [n for n in names if n not in {r.name for r in ROWS}]
        if unknown:
            parser.error(f"unknown row(s) {unknown}; rows: {[r.name for r in ROWS]}")
        rows = [r for r in ROWS if r.name in names]
    args.rows = rows
    return args


def report(results):
    folds_note = "1 fold (--quick)" if results["quick"] else f"{N_FOLDS}-fold"
    print(f"\n{BACKBONE}, {folds_note} StratifiedKFold(shuffle=True, "
          f"random_state={SEED}); mean ± std over folds\n")
    print(accuracy_table(results))
    print("\n" + fit_time_table(results))
    print("\n" + checks_text(results["checks"]))
    for name, row in results["rows"].items():
        if row.get("best_params"):
            print(f"\n{name}, best parameters per fold: {row['best_params']}")
        if row.get("warnings"):
            print(f"\n{name}, warnings: " + "; ".join(row["warnings"]))
    print(f"\ntotal {results['total_s'] / 60:.1f} min; load average (1, 5, 15 min) "
          f"{results['machine']['load_average_start']} at the start, "
          f"{results['machine']['load_average_end']} at the end")


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        with open(args.report) as f:
            results = json.load(f)
        results["checks"] = check_targets(results)
        report(results)
        return results
    start = time.perf_counter()
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    results = {"machine": machine(), "command": command, "quick": args.quick,
               "datasets": {}, "columns": [], "rows": {}}
    sets = load_sets(args.datasets, args.data_dir)
    results["datasets"] = {name: s.info for name, s in sets.items()}
    print(f"command: {command}")
    print("machine: " + json.dumps(results["machine"]))
    print("\nsources: " + json.dumps(
        {n: {k: i[k] for k in ("source", "licence", "sha256")}
         for n, i in results["datasets"].items()}, indent=1))
    print("\n" + sources_table(results["datasets"]), flush=True)
    for name in args.datasets:
        run_dataset(name, sets, args.rows, results, args.quick)
    results["checks"] = check_targets(results)
    results["total_s"] = time.perf_counter() - start
    results["machine"]["load_average_end"] = _load_average()
    report(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
