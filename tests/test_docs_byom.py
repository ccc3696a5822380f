"""docs/byom.md runs as written: every python block, in order, in one namespace."""

import re
from pathlib import Path

import pytest
from _torchvision import import_torchvision_models

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "byom.md"


@pytest.mark.slow
def test_bring_your_own_model_guide_runs(tmp_path, monkeypatch):
    import_torchvision_models()  # `import torchvision` in the guide finds it loaded
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(blocks), "docs/byom.md", "exec"), namespace)
    assert (
        namespace["compress"].onnx_difference(
            namespace["path"], namespace["small"], namespace["example"]
        )
        < 1e-5
    )
    assert (tmp_path / "resnet18_small.safetensors").stat().st_size > 0
