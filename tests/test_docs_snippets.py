"""The first example of docs/compression.md runs as written (it once raised NameError)."""

import os
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_compression_guide_first_example_runs(tmp_path, monkeypatch):
    text = (DOCS / "compression.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/compression.md", "exec"), {})
    assert os.path.getsize("small.onnx") > 0 and os.path.getsize("small.safetensors") > 0
