"""Read a single-file checkpoint's tensors, without ever running code from it.

`open_checkpoint` reads only the file's index; each tensor is read when it is asked for and cast to the dtype
and device the model needs, so a model is built one tensor at a time and the whole file is never held in RAM.
`.safetensors` files are read with plain file reads rather than a memory map: pages of a map stay counted in
the process's resident memory (RSS) for as long as the map lives, which would add the file's size to the peak."""

from __future__ import annotations

import _codecs
import json
import math
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

import numpy as np
import numpy.dtypes

from backend.errors import CheckpointError, UnsafeCheckpoint

StateDict = dict[str, torch.Tensor]

# Wrappers some tools put around the tensors, outermost first.
_NESTING_KEYS = ("state_dict", "model", "module")

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit; a larger "header" is a broken or hostile file


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    def nbytes(self, dtype: torch.dtype | None = None) -> int:
        as_dtype = dtype if dtype is not None and self.dtype.is_floating_point else self.dtype
        return math.prod(self.shape) * as_dtype.itemsize


class CheckpointTensors(Mapping[str, torch.Tensor]):
    """A checkpoint's tensors by name, each read from the file when it is asked for.

    Floating-point tensors come back in `dtype` on `device` (as given to `cast`); the rest keep their type."""

    def __init__(self, infos: dict[str, TensorInfo], read: Callable[[str], torch.Tensor],
                 names: dict[str, str] | None = None, dtype: torch.dtype | None = None,
                 device: torch.device | None = None):
        self._infos = infos
        self._read = read
        self._names = names if names is not None else {name: name for name in infos}  # our name -> name in file
        self._dtype = dtype
        self._device = device

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._read(self._names[name])
        dtype = self._dtype if tensor.is_floating_point() else None
        return tensor.to(device=self._device, dtype=dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def info(self, name: str) -> TensorInfo:
        return self._infos[self._names[name]]

    def meta(self) -> dict[str, torch.Tensor]:
        """Every tensor's shape and dtype as a 'meta' tensor (no data): enough to work out the architecture."""
        return {name: torch.empty(self.info(name).shape, dtype=self.info(name).dtype, device="meta")
                for name in self._names}

    def renamed(self, names: dict[str, str]) -> CheckpointTensors:
        """The same tensors under new names (`names`: new name -> current name)."""
        return CheckpointTensors(self._infos, self._read, {new: self._names[old] for new, old in names.items()},
                                 self._dtype, self._device)

    def cast(self, dtype: torch.dtype, device: torch.device) -> CheckpointTensors:
        return CheckpointTensors(self._infos, self._read, self._names, dtype, device)

    def nbytes(self, prefix: str, dtype: torch.dtype) -> int:
        """Bytes the tensors whose names start with `prefix` take once cast to `dtype`."""
        return sum(self.info(name).nbytes(dtype) for name in self._names if name.startswith(prefix))


def open_checkpoint(path: Path) -> CheckpointTensors:
    """The tensors of a `.safetensors` or `.ckpt`/`.pt`/`.pth`/`.bin` file, read lazily where the format allows."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _SafetensorsFile(path).tensors()
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        tensors = _unwrap(read_pickle(path), path)  # memory-mapped where the file is a zip archive
        infos = {name: TensorInfo(tuple(t.shape), t.dtype) for name, t in tensors.items()}
        return CheckpointTensors(infos, tensors.__getitem__)
    raise CheckpointError(f"{path.name}: unsupported checkpoint type '{suffix}'")


def read_state_dict(path: Path) -> StateDict:
    """All tensors of a checkpoint file, on the CPU, as stored."""
    tensors = open_checkpoint(path)
    return {name: tensors[name] for name in tensors}


class _SafetensorsFile:
    """The safetensors format: an 8-byte little-endian header length, a JSON index, then the raw tensor bytes."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = path.stat().st_size
                header_len = int.from_bytes(f.read(8), "little")
                if size < 8 or not 2 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
                    raise ValueError("the header length is wrong")
                header = json.loads(f.read(header_len))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise self._error(err) from err
        if not isinstance(header, dict):
            raise self._error("the header is not a JSON object")
        self.data_start = 8 + header_len
        data_len = size - self.data_start
        self.entries = {name: self._entry(name, value, data_len) for name, value in header.items()
                        if name != "__metadata__"}

    def tensors(self) -> CheckpointTensors:
        return CheckpointTensors({name: info for name, (info, _, _) in self.entries.items()}, self.read)

    def read(self, name: str) -> torch.Tensor:
        info, start, end = self.entries[name]
        buffer = torch.empty(end - start, dtype=torch.uint8)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.data_start + start)
                got = f.readinto(memoryview(buffer.numpy()))
        except OSError as err:
            raise self._error(err) from err
        if got != end - start:
            raise self._error(f"tensor {name} is cut short (the file is truncated)")
        return buffer.view(info.dtype).reshape(info.shape)

    def _entry(self, name: str, value, data_len: int) -> tuple[TensorInfo, int, int]:
        try:
            dtype = SAFETENSORS_DTYPES[value["dtype"]]
            shape = tuple(int(d) for d in value["shape"])
            start, end = (int(o) for o in value["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise self._error(f"tensor {name} has an unreadable entry ({err!r})") from err
        info = TensorInfo(shape, dtype)
        if min(shape, default=0) < 0 or not 0 <= start <= end <= data_len or end - start != info.nbytes():
            raise self._error(f"tensor {name}'s offsets do not match its shape or lie outside the file")
        return info, start, end

    def _error(self, why) -> CheckpointError:
        return CheckpointError(f"{self.path.name} is not a readable .safetensors file: {why}")


class _LightningCheckpointStandIn:
    """Takes the place of pytorch_lightning's ModelCheckpoint callback, which old .ckpt files pickle.

    Only its name is trusted: the stand-in keeps the state it is given and runs nothing."""

    def __setstate__(self, state):
        self.state = state


_LightningCheckpointStandIn.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
_LightningCheckpointStandIn.__qualname__ = "ModelCheckpoint"
_LightningCheckpointStandIn.__name__ = "ModelCheckpoint"


def _a1111_safe_globals() -> list:
    """What A1111's safe unpickler allows beyond torch's own tensors and containers: numpy scalars, dtypes and
    arrays under the names old checkpoints use (numpy.core.multiarray), `_codecs.encode`, and the Lightning
    callback. The numpy dtype classes are listed so a pickled dtype's state can be set; the file cannot name
    them as globals of its own (A1111 does not allow that either, and they are not callable into anything)."""
    multiarray = np._core.multiarray
    dtype_classes = [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes)
                     if n.endswith("DType") and isinstance(getattr(numpy.dtypes, n), type)]
    return [_LightningCheckpointStandIn, torch.nn.ParameterDict, (multiarray.scalar, "numpy.core.multiarray.scalar"),
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.dtype, np.ndarray,
            _codecs.encode, *dtype_classes]


# What torch's restricted unpickler says when a file names a global it does not allow.
_UNSAFE_MARKERS = ("unsupported global", "unsupported operand", "not an allowed global", "can only build",
                   "is blocked", "allowlist")


def read_pickle(path: Path) -> object:
    # weights_only=True uses torch's restricted unpickler: only tensors, plain containers and the globals
    # listed above are built; any other global (os.system, eval, ...) makes it raise before anything runs.
    is_zip = _is_zip(path)
    if is_zip:
        check_zip_sizes(path)
    try:
        with torch.serialization.safe_globals(_a1111_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as err:
        if any(marker in str(err).lower() for marker in _UNSAFE_MARKERS):
            raise UnsafeCheckpoint(
                f"{path.name} was refused as unsafe: it names Python code that would run when loaded (not just "
                f"tensors). Convert it to .safetensors with a tool you trust. Details: {_unsafe_detail(err)}"
            ) from err
        raise _corrupt(path, err) from err
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, struct.error) as err:
        raise _corrupt(path, err) from err


def _corrupt(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{path.name} is corrupt or truncated (not a readable checkpoint): {_first_line(err)}")


def _unsafe_detail(err: BaseException) -> str:
    for line in str(err).splitlines():
        if "global" in line.lower():
            return line.strip()[:200]
    return _first_line(err)[:200]


# A zip entry may be stored or deflated; deflate cannot expand data by more than about 1032x.
_MAX_DEFLATE_RATIO = 1032
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def check_zip_sizes(path: Path) -> None:
    """Refuse a zip checkpoint whose entries claim more bytes than the file can hold, before torch reads it.
    Sizes are declared twice (central directory and each local header, the latter possibly as zip64): both
    are checked, and they must agree."""
    file_size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for entry in archive.infolist():
                _check_entry(entry, raw, file_size, path)
    except (zipfile.BadZipFile, OSError, struct.error) as err:
        raise _corrupt(path, err) from err


def _check_entry(entry: zipfile.ZipInfo, raw, file_size: int, path: Path) -> None:
    ratio = 1 if entry.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO
    fits = entry.compress_size <= file_size and entry.file_size <= max(entry.compress_size, 1) * ratio
    if not fits or entry.header_offset + entry.compress_size > file_size:
        raise CheckpointError(f"{path.name} was refused: its entry {entry.filename!r} claims {entry.file_size} bytes, "
                              f"more than the {file_size}-byte file can hold")
    raw.seek(entry.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size:
        raise CheckpointError(f"{path.name} is corrupt or truncated: a local zip header is cut short")
    sig, _, flags, _, _, _, _, local_compressed, local_size, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if sig != b"PK\x03\x04":
        raise CheckpointError(f"{path.name} is corrupt: entry {entry.filename!r} has no local header")
    if local_size == 0xFFFFFFFF or local_compressed == 0xFFFFFFFF:
        raw.seek(entry.header_offset + _LOCAL_HEADER.size + name_len)
        local_size, local_compressed = _zip64_sizes(raw.read(extra_len), local_size, local_compressed)
    declared_later = flags & 0x08 and local_size == 0 and local_compressed == 0  # sizes in a data descriptor
    if not declared_later and (local_size, local_compressed) != (entry.file_size, entry.compress_size):
        raise CheckpointError(f"{path.name} was refused: entry {entry.filename!r} declares different sizes in its "
                              "local header and in the central directory")


def _zip64_sizes(extra: bytes, size: int, compressed: int) -> tuple[int, int]:
    """The zip64 extra field (id 1) holds the 8-byte sizes whose 4-byte fields are 0xFFFFFFFF, size first."""
    offset = 0
    while offset + 4 <= len(extra):
        field_id, length = struct.unpack_from("<HH", extra, offset)
        body = extra[offset + 4 : offset + 4 + length]
        if field_id == 1:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if size == 0xFFFFFFFF and values:
                size = values.pop(0)
            if compressed == 0xFFFFFFFF and values:
                compressed = values.pop(0)
            break
        offset += 4 + length
    return size, compressed


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
