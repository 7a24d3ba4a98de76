"""The python blocks of docs/getting-started.md run as written, in order, in one namespace."""
import os
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"


def test_getting_started_code_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for index, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name}[block {index}]", "exec"), namespace)
    assert os.path.isfile("three.png") and os.path.isfile("five.png")
    assert os.path.isfile(os.path.join("my-digits", "model_index.json"))
