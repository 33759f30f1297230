"""Rebuild the bundled ``emoji`` image folder from the npm package it comes from.

Not imported by the library; kept so the data can be regenerated and audited::

    npm pack emoji-datasource-google@16.0.0
    tar xzf emoji-datasource-google-16.0.0.tgz
    python sktransfer/datasets/_build_emoji.py package

Each class is one Unicode emoji subcategory; every emoji of that subcategory
with a Noto drawing is copied (64 x 64 RGBA PNG, unchanged) under its short
name. Noto Emoji images are under the Apache License 2.0.
"""

import json
import shutil
import sys
from pathlib import Path

# class folder name -> Unicode emoji subcategory
CLASSES = {
    "bird": "animal-bird",
    "bug": "animal-bug",
    "fruit": "food-fruit",
    "instrument": "musical-instrument",
    "mammal": "animal-mammal",
    "sea_animal": "animal-marine",
    "vegetable": "food-vegetable",
    "vehicle": "transport-ground",
}


def build(package_dir, out_dir):
    package_dir, out_dir = Path(package_dir), Path(out_dir)
    emoji = json.loads((package_dir / "emoji.json").read_text(encoding="utf-8"))
    counts = {}
    for folder, subcategory in CLASSES.items():
        target = out_dir / folder
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        chosen = [
            e for e in emoji if e["subcategory"] == subcategory and e["has_img_google"]
        ]
        for e in chosen:
            src = package_dir / "img" / "google" / "64" / e["image"]
            shutil.copyfile(src, target / f"{e['short_name']}.png")
        counts[folder] = len(chosen)
    return counts


if __name__ == "__main__":
    here = Path(__file__).resolve().parent / "emoji"
    print(build(sys.argv[1], here))
