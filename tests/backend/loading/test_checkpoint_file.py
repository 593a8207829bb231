import os
import pickle
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from backend.errors import CheckpointError, UnsafeCheckpoint
from backend.loading.checkpoint_file import read_state_dict


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
