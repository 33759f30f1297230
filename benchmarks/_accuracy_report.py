"""Tables and target checks of the accuracy benchmark, from its results dict.

Accuracies are fractions in the results and percentage points in the
tables; "± x" is the standard deviation over folds (numpy's default,
``ddof=0``). The checks compare rows measured in the same run on the same
folds, so they are as fair as the folds allow; with 3 folds of a few
hundred images a point of accuracy is a handful of images, which is why
each check prints its margin and not only PASS or MISS.
"""

import numpy as np
from _accuracy_rows import AUGMENT, AUGMENT_TTA, FINE_TUNED, FROZEN, PROBE

__all__ = ["accuracy_table", "check_targets", "fit_time_table", "sources_table"]


def _mean_pct(values):
    return 100 * float(np.mean(values))


def _cell(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{_mean_pct(values):.1f} ± {100 * float(np.std(values)):.1f}"


def _table(header, lines):
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join("---" for _ in header) + "|")
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return "\n".join(out)


def accuracy_table(results):
    """Markdown table: one line per row, one column per (train → test) pair."""
    columns = [c["name"] for c in results["columns"]]
    lines = []
    for name, row in results["rows"].items():
        if row["status"] != "ok":
            lines.append([name] + [row["status"]] * len(columns))
        else:
            lines.append([name] + [_cell(row["accuracy"].get(c, [])) for c in columns])
    return _table(["accuracy (%)"] + columns, lines)


def fit_time_table(results):
    """Markdown table of the mean fit time per fold, per training set."""
    train_sets = list(dict.fromkeys(c["train"] for c in results["columns"]))
    lines = []
    for name, row in results["rows"].items():
        if row["status"] != "ok":
            lines.append([name] + ["n/a"] * len(train_sets))
            continue
        cells = [f"{np.mean(row['fit_s'][t]):.1f}" for t in train_sets]
        lines.append([name] + cells)
    probe = results["rows"].get(PROBE)
    if probe and probe["status"] == "ok":
        lines.append(
            ["(linear probe: extraction, once)"]
            + [f"{probe['extract_s'][t]:.1f}" for t in train_sets]
        )
    return _table(["fit s / fold"] + train_sets, lines)


def sources_table(datasets):
    """Markdown table of where each dataset comes from."""
    lines = [
        [name, info["source"], info["licence"], str(info["n_images"]),
         str(info["n_classes"]), info["image_size"]]
        for name, info in datasets.items()
    ]
    return _table(
        ["dataset", "package", "licence", "images", "classes", "image size"], lines
    )


def _means(results, row_name):
    """Mean accuracy (points) per column, or None if the row did not run."""
    row = results["rows"].get(row_name)
    if row is None or row["status"] != "ok":
        return None
    return {c: _mean_pct(v) for c, v in row["accuracy"].items()}


def _check(name, target, status, detail):
    return {"check": name, "target": target, "status": status, "detail": detail}


def _unavailable(name, target, *rows):
    return _check(name, target, "n/a", f"row(s) not run: {', '.join(rows)}")


def _deltas(a, b):
    return {c: a[c] - b[c] for c in a if c in b}


def _fmt(deltas):
    return ", ".join(f"{c} {d:+.1f}" for c, d in deltas.items())


def check_targets(results):
    """The targets the recipes are judged by, as deltas with PASS/MISS."""
    probe, frozen = _means(results, PROBE), _means(results, FROZEN)
    tuned = _means(results, FINE_TUNED)
    checks = []

    target = "frozen default >= linear probe - 0.5 points on every dataset"
    if probe and frozen:
        d = _deltas(frozen, probe)
        ok = min(d.values()) >= -0.5
        checks.append(_check("frozen vs probe", target, "PASS" if ok else "MISS",
                             f"points: {_fmt(d)}"))
    else:
        checks.append(_unavailable("frozen vs probe", target, PROBE, FROZEN))

    target = "fine-tuned default >= linear probe + 3 points on average, never below"
    if probe and tuned:
        d = _deltas(tuned, probe)
        mean = float(np.mean(list(d.values())))
        ok = mean >= 3 and min(d.values()) >= 0
        checks.append(_check("fine-tuned vs probe", target, "PASS" if ok else "MISS",
                             f"mean {mean:+.1f} points; {_fmt(d)}"))
    else:
        checks.append(_unavailable("fine-tuned vs probe", target, PROBE, FINE_TUNED))

    for row_name, label in ((AUGMENT_TTA, "aug+TTA"), (AUGMENT, "augment only")):
        target = (f"{row_name} >= fine-tuned default - 1 point on every dataset"
                  + ("" if row_name == AUGMENT_TTA else " (for information)"))
        other = _means(results, row_name)
        if tuned and other:
            d = _deltas(other, tuned)
            ok = min(d.values()) >= -1
            checks.append(_check(f"{label} vs fine-tuned", target,
                                 "PASS" if ok else "MISS", f"points: {_fmt(d)}"))
        else:
            checks.append(_unavailable(f"{label} vs fine-tuned", target, row_name))

    # First folds only: later folds of the cached row find most of their
    # images in the in-memory cache (the first fold's test images included),
    # which a user's single fine-tune would not.
    target = (f"{AUGMENT} fit time <= 3x {FINE_TUNED} fit time "
              "(first fold, cold feature cache)")
    if tuned and _means(results, AUGMENT):
        ratios = {
            t: results["rows"][AUGMENT]["fit_s"][t][0]
            / results["rows"][FINE_TUNED]["fit_s"][t][0]
            for t in results["rows"][FINE_TUNED]["fit_s"]
        }
        ok = max(ratios.values()) <= 3
        detail = ", ".join(f"{t} {r:.2f}x" for t, r in ratios.items())
        checks.append(_check("augment cost", target, "PASS" if ok else "MISS",
                             detail))
    else:
        checks.append(_unavailable("augment cost", target, FINE_TUNED, AUGMENT))

    # "After extraction": the frozen row's later folds, whose images the
    # first fold's fit and scoring already put in the feature cache.
    target = ("frozen default fit time <= 2x LR fit time after extraction "
              "(folds after the first)")
    rows = results["rows"]
    if probe and frozen:
        ratios = {
            t: np.mean(rows[FROZEN]["fit_s"][t][1:] or rows[FROZEN]["fit_s"][t])
            / np.mean(rows[PROBE]["fit_s"][t])
            for t in rows[PROBE]["fit_s"]
        }
        ok = max(ratios.values()) <= 2
        detail = ", ".join(f"{t} {r:.2f}x" for t, r in ratios.items())
        checks.append(_check("frozen fit time", target, "PASS" if ok else "MISS",
                             detail))
    else:
        checks.append(_unavailable("frozen fit time", target, PROBE, FROZEN))
    return checks


def checks_text(checks):
    """One line per check."""
    return "\n".join(
        f"{c['status']:4s}  {c['target']}: {c['detail']}" for c in checks
    )
