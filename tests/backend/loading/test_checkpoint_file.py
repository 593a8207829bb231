import json
import os
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
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


def _legacy_pickle_naming_old_numpy(path):
    """A legacy (non-zip) torch pickle as old numpy wrote it: `numpy.core.multiarray` globals (numpy 2 writes
    `numpy._core`). The GLOBAL opcodes are newline-terminated text, so renaming them keeps the file valid."""
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": np.int64(5), "lr": np.float64(0.1),
                "dtype": np.dtype("float32")}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))


def test_numpy_scalars_and_dtypes_load_as_in_a1111(tmp_path):
    path = tmp_path / "old.ckpt"
    _legacy_pickle_naming_old_numpy(path)
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


def test_globals_a1111_refuses_stay_refused(tmp_path):
    # numpy 2's module name is not on A1111's list either; only what A1111 accepts is accepted
    path = tmp_path / "new-numpy.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "step": np.int64(5)}, path)
    with pytest.raises(UnsafeCheckpoint, match="unsafe"):
        read_state_dict(path)


def test_corrupt_and_unsafe_files_get_different_messages(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64)}}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as caught:
        read_state_dict(path)
    assert not isinstance(caught.value, UnsafeCheckpoint)
    zipped = tmp_path / "cut-zip.ckpt"
    torch.save({"state_dict": {"w": torch.ones(64)}}, zipped)
    zipped.write_bytes(zipped.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(zipped)


def _zip_checkpoint_claiming(tmp_path, where: str) -> Path:
    """A real torch zip checkpoint whose data.pkl entry claims 3 GB, in the central directory or in the
    local header (the CRC is untouched: only a size field changes)."""
    path = tmp_path / f"huge-{where}.ckpt"
    torch.save({"state_dict": {"w": torch.ones(4)}}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        entry = next(e for e in archive.infolist() if e.filename.endswith("data.pkl"))
    if where == "local":
        struct.pack_into("<I", data, entry.header_offset + 22, 3 * 1024**3)
    else:
        name = entry.filename.encode()
        central = data.find(b"PK\x01\x02")
        while data[central + 46 : central + 46 + len(name)] != name:
            central = data.find(b"PK\x01\x02", central + 4)
        struct.pack_into("<I", data, central + 24, 3 * 1024**3)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("where", ["central", "local"])
def test_zip_entries_claiming_huge_sizes_are_refused_before_reading(tmp_path, where):
    path = _zip_checkpoint_claiming(tmp_path, where)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
