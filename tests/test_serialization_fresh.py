"""Every layer family saves and loads in a fresh process, whatever was imported before.

Layers own their serialization (`config()` / `from_config`, registered when their
class is created), so a model file written by one process is rebuilt by another
that imported only `bayesprune.compress`, with the same posterior-mean outputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SAVE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from torch import nn
    from bayesprune.compress import save_model
    from bayesprune.models import build
    from bayesprune.nn import convert, families, get_family, use_posterior_mean

    assert "bayesprune.app" not in sys.modules  # nothing registers codecs on the side
    out, outputs = Path(sys.argv[1]), {}
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for name in families():
        torch.manual_seed(1)
        family = get_family(name)
        if family.builders:
            model = build(family.builders[0], n_kernels=3, image_size=8, n_classes=2,
                          family=name)
        else:
            plain = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                  nn.Linear(27, 4), nn.Tanh(), nn.Linear(4, 2))
            options = {"input_gates": True} if family.takes("input_gates") else {}
            model = convert(plain, name, **options)
        first = next((m for m in model.modules() if hasattr(m, "set_weight_mask")), None)
        if first is not None:  # a masked layer rebuilds with its mask
            mask = torch.ones_like(first.weight_mu)
            mask[0] = 0
            first.set_weight_mask(mask)
        save_model(model, out / f"{name}.safetensors")
        with use_posterior_mean(model), torch.no_grad():
            y = model(x)
        outputs[name] = (y[0] if isinstance(y, tuple) else y).tolist()
    (out / "outputs.json").write_text(json.dumps(outputs))
    """
)

LOAD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from bayesprune.compress import load_model
    from bayesprune.nn import use_posterior_mean

    out = Path(sys.argv[1])
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    result = {}
    for name, expected in json.loads((out / "outputs.json").read_text()).items():
        model = load_model(out / f"{name}.safetensors")
        with use_posterior_mean(model), torch.no_grad():
            y = model(x)
        y = (y[0] if isinstance(y, tuple) else y)
        result[name] = {
            "error": float((y - torch.tensor(expected)).abs().max()),
            "layers": sorted({type(m).__name__ for m in model.modules()}),
        }
    print(json.dumps(result))
    """
)


def _run(script: str, folder) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_every_family_round_trips_between_fresh_processes(tmp_path):
    _run(SAVE, tmp_path)
    loaded = json.loads(_run(LOAD, tmp_path).strip().splitlines()[-1])
    expected = {"deterministic", "evi", "gaussian", "sparse_vd", "spike_slab", "spike_slab_edge"}
    assert expected <= set(loaded)
    for name, info in loaded.items():
        assert info["error"] < 1e-6, (name, info)
    assert "SpikeSlabConv2d" in loaded["spike_slab"]["layers"]
    assert "SpikeSlabEdgeLinear" in loaded["spike_slab_edge"]["layers"]
    assert "EVIConv2d" in loaded["evi"]["layers"]
    assert "SparseVDConv2d" in loaded["sparse_vd"]["layers"]
