"""The LoRA folder: every network file by name (file stem) and alias (`ss_output_name`), its metadata, hash and
card sidecars, and its tensors (read on first use, then kept while recently used)."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from backend.errors import CheckpointError
from backend.hashing import sha256_file
from backend.json_depth import is_shallow
from backend.loading.checkpoint_file import read_state_dict

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".ckpt")


@dataclass
class NetworkFile:
    name: str
    path: Path
    relative: str  # path inside its folder, for listings
    metadata: dict = field(default_factory=dict)
    _hash: str | None = None

    @property
    def alias(self) -> str:
        return str(self.metadata.get("ss_output_name") or self.name)

    @property
    def short_hash(self) -> str:
        """A1111's LoRA hash: `sshs_model_hash` from the metadata, else the sha256 of the file after its
        safetensors header (kohya's "addnet" hash); first 12 hex."""
        if self._hash is None:
            self._hash = str(self.metadata.get("sshs_model_hash") or "") or _addnet_hash(self.path)
        return self._hash[:12]

    def card(self) -> dict:
        """Description, activation text and preferred weight from a `<name>.json` sidecar, as A1111 keeps them."""
        sidecar = self.path.with_suffix(".json")
        try:
            text = sidecar.read_text() if sidecar.is_file() else "{}"
            data = json.loads(text) if is_shallow(text) else {}
        except (OSError, ValueError, RecursionError):
            data = {}
        return data if isinstance(data, dict) else {}

    def preferred_weight(self) -> float:
        try:
            return float(self.card().get("preferred weight") or 1.0) or 1.0
        except (TypeError, ValueError):
            return 1.0


def _addnet_hash(path: Path) -> str:
    offset = 0
    if path.suffix.lower() == ".safetensors":
        with open(path, "rb") as f:
            offset = 8 + int.from_bytes(f.read(8), "little")
    return sha256_file(path, offset)


def read_metadata(path: Path) -> dict:
    """A safetensors file's `__metadata__`, with values that hold JSON objects parsed (as A1111 returns them)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= 100 * 1024 * 1024:
                return {}
            raw = f.read(length)
        if not is_shallow(raw):
            log.warning("%s: its header nests too deeply; its metadata is skipped", path.name)
            return {}
        header = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    parsed = {}
    for key, value in metadata.items():
        if isinstance(value, str) and value[:1] in "{[" and is_shallow(value):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        parsed[key] = value
    return parsed


class NetworkLibrary:
    def __init__(self, folders: list[Path], cache_size: int = 4):
        self.folders = folders
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._files: dict[str, NetworkFile] = {}
        self._tensors: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        found: dict[str, NetworkFile] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, _, names in os.walk(folder):
                for name in sorted(names):
                    path = Path(root) / name
                    if name.lower().endswith(SUFFIXES) and path.is_file():
                        found.setdefault(path.stem, NetworkFile(path.stem, path, path.relative_to(folder).as_posix(),
                                                                read_metadata(path)))
        with self._lock:
            self._files = found

    def all(self) -> list[NetworkFile]:
        with self._lock:
            return sorted(self._files.values(), key=lambda f: f.name.lower())

    def find(self, name: str, hash_hint: str | None = None) -> NetworkFile | None:
        """By name, then alias (A1111 matches both), then by short hash (pasted infotext whose name differs)."""
        files = self.all()
        for match in (lambda f: f.name == name, lambda f: f.alias == name,
                      lambda f: bool(hash_hint) and f.short_hash == hash_hint[:12]):
            found = next((f for f in files if match(f)), None)
            if found is not None:
                return found
        return None

    def tensors(self, network: NetworkFile) -> dict[str, torch.Tensor]:
        stat = network.path.stat()
        key = (str(network.path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._tensors:
                self._tensors.move_to_end(key)
                return self._tensors[key]
        try:
            tensors = read_state_dict(network.path)
        except CheckpointError:
            raise
        with self._lock:
            self._tensors[key] = tensors
            while len(self._tensors) > self.cache_size:
                self._tensors.popitem(last=False)
        return tensors
