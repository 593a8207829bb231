"""Read a single-file checkpoint into a flat {name: tensor} dict, without ever running code from it."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from backend.errors import CheckpointError, UnsafeCheckpoint

StateDict = dict[str, torch.Tensor]

# Wrappers some tools put around the tensors, outermost first.
_NESTING_KEYS = ("state_dict", "model", "module")


class _LightningCheckpointStandIn:
    """Takes the place of pytorch_lightning's ModelCheckpoint callback, which old .ckpt files pickle.

    Only its name is trusted: the stand-in keeps the state it is given and runs nothing."""

    def __setstate__(self, state):
        self.state = state


_LightningCheckpointStandIn.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
_LightningCheckpointStandIn.__qualname__ = "ModelCheckpoint"
_LightningCheckpointStandIn.__name__ = "ModelCheckpoint"


def read_state_dict(path: Path) -> StateDict:
    """All tensors of a `.safetensors` or `.ckpt`/`.pt`/`.pth` file, on the CPU."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        return _unwrap(_read_pickle(path), path)
    raise CheckpointError(f"{path.name}: unsupported checkpoint type '{suffix}'")


def _read_safetensors(path: Path) -> StateDict:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path.name} is not a readable .safetensors file: {err}") from err


def _read_pickle(path: Path) -> object:
    # weights_only=True uses torch's restricted unpickler: only tensors and plain containers are built,
    # any other global (os.system, eval, ...) makes it raise before anything runs.
    try:
        with torch.serialization.safe_globals([_LightningCheckpointStandIn]):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(
            f"{path.name} was refused: it contains Python objects that would run code when loaded "
            f"(not just tensors). Convert it to .safetensors with a tool you trust. Details: {_first_line(err)}"
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path.name} is not a readable checkpoint: {_first_line(err)}") from err


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unwrap(obj: object, path: Path) -> StateDict:
    for key in _NESTING_KEYS:
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} holds no tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path.name} holds no tensors")
    return tensors
