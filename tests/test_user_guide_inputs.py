"""The examples of the user guide's "Inputs" section run as written.

They are run on the tiny test backbone instead of efficientnet_lite0: what
they show is the forms X may take, and the real backbone would make this
test take a minute.
"""

import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "user_guide.md"


def _inputs_examples():
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("\n## Inputs\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_inputs_section_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("fsspec")
    monkeypatch.chdir(tmp_path)
    examples = _inputs_examples()
    assert len(examples) == 3
    namespace = {}
    for code in examples:  # one session: later blocks use earlier names
        assert '"efficientnet_lite0"' in code or "extractor" in code
        code = code.replace('"efficientnet_lite0"', '"tiny_cnn", weights=None')
        exec(compile(code, str(GUIDE), "exec"), namespace)


def test_medical_section_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("pydicom")
    monkeypatch.chdir(tmp_path)
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("\n## Medical and high-bit-depth images\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    code = code.replace('"efficientnet_lite0"', '"tiny_cnn", weights=None')
    namespace = {}
    exec(compile(code, str(GUIDE), "exec"), namespace)
    assert namespace["features"].shape[0] == 2
