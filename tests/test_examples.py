"""Every example except the demo (``make demo``) runs to the end."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "demo.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    # A fresh working directory: examples that write files write them there.
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), f"{script} printed nothing"
