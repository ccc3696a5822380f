"""A model or checkpoint file whose tensor bytes changed is refused, not loaded silently."""

from __future__ import annotations

import pytest
import torch

import bayesprune as bp
from bayesprune.compress import load_model, save_model
from bayesprune.io import CheckpointError, load_tensors, save_tensors, tensors_digest


def _flip_last_data_byte(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # inside the tensor data (the header comes first)
    path.write_bytes(bytes(raw))


def test_a_flipped_bit_in_a_saved_model_is_one_clear_error(tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(bp.mlp(4, [3], 2), path)
    load_model(path)  # intact: loads
    _flip_last_data_byte(path)
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_model(path)


def test_the_digest_covers_names_dtypes_shapes_and_values():
    a = {"w": torch.zeros(2, 3)}
    assert tensors_digest(a) == tensors_digest({"w": torch.zeros(2, 3)})
    assert tensors_digest(a) != tensors_digest({"v": torch.zeros(2, 3)})
    assert tensors_digest(a) != tensors_digest({"w": torch.zeros(3, 2)})
    assert tensors_digest(a) != tensors_digest({"w": torch.zeros(2, 3, dtype=torch.float64)})
    b = torch.zeros(2, 3)
    b[1, 2] = 1e-30
    assert tensors_digest(a) != tensors_digest({"w": b})


def test_files_without_a_digest_still_load(tmp_path):
    """Files written before checksums existed have none: they load as before."""
    from safetensors.torch import save

    path = tmp_path / "old.safetensors"
    path.write_bytes(save({"w": torch.ones(2)}, metadata={"json": "{}"}))
    tensors, meta = load_tensors(path)
    assert torch.equal(tensors["w"], torch.ones(2)) and meta == {}
    save_tensors(path, {"w": torch.ones(2)})
    assert load_tensors(path)[0]["w"].sum() == 2
