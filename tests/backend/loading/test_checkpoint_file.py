import json
import os
import pickle
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from backend.errors import CheckpointError, UnsafeCheckpoint
from backend.loading.checkpoint_file import open_checkpoint, read_state_dict


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(UnsafeCheckpoint, match="refused"):
        read_state_dict(path)
    assert not marker.exists()


def test_legacy_plain_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil-legacy.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _RunsCode(marker)}, f)
    with pytest.raises(CheckpointError):
        read_state_dict(path)
    assert not marker.exists()


def test_lightning_checkpoint_with_callback_object_loads(tmp_path, monkeypatch):
    # Old SD 1.x .ckpt files pickle a pytorch_lightning ModelCheckpoint callback beside the weights.
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/loss"

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": {"cb": ModelCheckpoint()}}, path)
    monkeypatch.undo()  # loading must not need the real (or fake) pytorch_lightning
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


def test_corrupt_files_give_a_clear_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        read_state_dict(bad)
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {}}, empty)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_state_dict(empty)


def test_fp16_safetensors_load_as_stored(tmp_path):
    path = tmp_path / "half.safetensors"
    save_file({"a": torch.ones(3, dtype=torch.float16)}, str(path))
    assert read_state_dict(path)["a"].dtype == torch.float16


def test_tensors_are_read_from_the_file_only_when_asked_for(tmp_path):
    path = tmp_path / "lazy.safetensors"
    save_file({"a": torch.zeros(4, dtype=torch.float16), "steps": torch.arange(3)}, str(path))
    tensors = open_checkpoint(path)
    assert tensors.meta()["a"].shape == (4,) and tensors.meta()["a"].device.type == "meta"
    save_file({"a": torch.ones(4, dtype=torch.float16), "steps": torch.arange(3)}, str(path))  # same index
    assert torch.equal(tensors["a"], torch.ones(4, dtype=torch.float16))  # read now, not when opened


def test_cast_converts_floating_point_tensors_only(tmp_path):
    path = tmp_path / "mixed.safetensors"
    save_file({"w": torch.full((2, 3), 1.5, dtype=torch.float16), "ids": torch.arange(3)}, str(path))
    cast = open_checkpoint(path).cast(torch.bfloat16, torch.device("cpu"))
    assert cast["w"].dtype == torch.bfloat16 and torch.equal(cast["w"].float(), torch.full((2, 3), 1.5))
    assert cast["ids"].dtype == torch.int64
    assert cast.nbytes("", torch.bfloat16) == 2 * 3 * 2 + 3 * 8


def _safetensors_with_header(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def test_hostile_or_broken_safetensors_headers_are_refused(tmp_path):
    cases = {
        "outside.safetensors": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, bytes(16)),
        "mismatch.safetensors": ({"a": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 16]}}, bytes(16)),
        "dtype.safetensors": ({"a": {"dtype": "PYOBJ", "shape": [4], "data_offsets": [0, 16]}}, bytes(16)),
        "truncated.safetensors": ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)),
    }
    for name, (header, data) in cases.items():
        with pytest.raises(CheckpointError, match=name):
            open_checkpoint(_safetensors_with_header(tmp_path / name, header, data))
    huge = tmp_path / "huge-header.safetensors"
    huge.write_bytes((1 << 60).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        open_checkpoint(huge)
