"""Peak RSS of a fit on many small JPEGs, for 2 and for 10 epochs.

Each fit runs in its own subprocess so its peak is its own. Run alone:
``python benchmarks/bench_memory.py [n_images]``.
"""

import json
import os
import subprocess
import sys
import tempfile

from _common import make_images

BACKBONE = "mobilenet_v3_small"
HERE = os.path.dirname(os.path.abspath(__file__))


def _child(folder, n_images, epochs):
    from _common import peak_rss_mib

    from sktransfer import PretrainedCNNClassifier

    X, y = make_images(folder, n_images, size=(256, 224))
    before = peak_rss_mib()
    PretrainedCNNClassifier(
        BACKBONE, weights=None, max_epochs=epochs, random_state=0, device="cpu",
    ).fit(X, y)
    print(json.dumps({"before_fit": before, "peak": peak_rss_mib()}))


def peak_rss(folder, n_images, epochs):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, __file__, "--child", folder, str(n_images), str(epochs)],
        check=True, capture_output=True, text=True, env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(n_images=2000, folder=None):
    folder = folder or tempfile.mkdtemp(prefix="sktransfer-bench-")
    folder = f"{folder}/small"
    make_images(folder, n_images, size=(256, 224))
    two, ten = peak_rss(folder, n_images, 2), peak_rss(folder, n_images, 10)
    return [
        (f"6a. peak RSS, fit {n_images} imgs {BACKBONE}, 2 epochs (MiB)",
         two["peak"], "report"),
        ("6b. peak RSS, same fit, 10 epochs (MiB)", ten["peak"], "report"),
        ("6c. peak RSS growth 10 vs 2 epochs (MiB)", ten["peak"] - two["peak"],
         "~0"),
    ], {"rss_before_fit": two["before_fit"]}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        rows, extra = run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
        for name, value, target in rows:
            print(f"{name:60s} {value:8.1f}  target {target}")
        print(extra)
