"""Finds checkpoints and VAEs under the models folders and gives each its A1111 title and short hash."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from backend.errors import ModelNotFound

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
SIDECAR_VAE = ".vae"


@dataclass(frozen=True)
class ModelFile:
    path: Path
    name: str  # path relative to its folder, with forward slashes: "sub/model.safetensors"
    sha256: str | None  # None for diffusers folders (no single file to hash)

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name

    @property
    def model_name(self) -> str:
        """File name without extension, as A1111's `Model:` infotext field and `model_name` show it."""
        return Path(self.name).stem if not self.path.is_dir() else Path(self.name).name

    @property
    def is_diffusers_folder(self) -> bool:
        return self.path.is_dir()


class HashCache:
    """SHA-256 of files, kept on disk keyed by path, size and mtime so unchanged files are never re-hashed."""

    def __init__(self, cache_file: Path):
        self.cache_file = cache_file
        self._lock = threading.Lock()
        self._entries = self._read()

    def _read(self) -> dict:
        try:
            return json.loads(self.cache_file.read_text())
        except (OSError, ValueError):
            return {}

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns]
        with self._lock:
            entry = self._entries.get(key)
            if entry and entry["stamp"] == stamp:
                return entry["sha256"]
        digest = _hash_file(path)
        with self._lock:
            self._entries[key] = {"stamp": stamp, "sha256": digest}
            self._write()
        return digest

    def _write(self) -> None:
        # A unique temporary file, then an atomic rename: two processes sharing the cache never clash.
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self._entries, indent=1))
        os.replace(tmp, self.cache_file)


def _hash_file(path: Path) -> str:
    log.info("hashing %s (once; the result is cached)", path.name)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ModelRegistry:
    """What is in the checkpoint and VAE folders. `refresh()` rescans; lookups only return found files."""

    def __init__(self, checkpoint_dir: Path, vae_dir: Path, hashes: HashCache):
        self.checkpoint_dir = checkpoint_dir
        self.vae_dir = vae_dir
        self.hashes = hashes
        self._lock = threading.Lock()
        self._checkpoints: list[ModelFile] = []
        self._vaes: list[ModelFile] = []
        self.refresh()

    def refresh(self) -> None:
        checkpoints = [self._model_file(p, self.checkpoint_dir) for p in _scan_checkpoints(self.checkpoint_dir)]
        vaes = [self._model_file(p, self.vae_dir) for p in _scan_files(self.vae_dir, VAE_SUFFIXES)]
        with self._lock:
            self._checkpoints, self._vaes = checkpoints, vaes

    def _model_file(self, path: Path, root: Path) -> ModelFile:
        name = path.relative_to(root).as_posix()
        return ModelFile(path, name, None if path.is_dir() else self.hashes.sha256(path))

    @property
    def checkpoints(self) -> list[ModelFile]:
        with self._lock:
            return list(self._checkpoints)

    @property
    def vaes(self) -> list[ModelFile]:
        with self._lock:
            return list(self._vaes)

    def find_checkpoint(self, wanted: str) -> ModelFile:
        """By title, name, name without extension or short hash, as A1111 accepts."""
        found = _match(self.checkpoints, wanted)
        if found is None:
            raise ModelNotFound(f"checkpoint '{wanted}' not found in {self.checkpoint_dir}")
        return found

    def find_vae(self, wanted: str) -> ModelFile:
        found = _match(self.vaes, wanted)
        if found is None:
            raise ModelNotFound(f"VAE '{wanted}' not found in {self.vae_dir}")
        return found

    def sidecar_vae(self, checkpoint: ModelFile) -> Path | None:
        """`<name>.vae.safetensors` (or .pt/.ckpt) beside a checkpoint file."""
        if checkpoint.is_diffusers_folder:
            return None
        stem = checkpoint.path.with_suffix("")
        for suffix in VAE_SUFFIXES:
            candidate = stem.with_name(stem.name + SIDECAR_VAE + suffix)
            if candidate.is_file():
                return candidate
        return None


def _match(files: list[ModelFile], wanted: str) -> ModelFile | None:
    wanted = wanted.strip()
    for f in files:
        if wanted in (f.title, f.name, f.model_name, f.short_hash, f.sha256):
            return f
    # A title whose hash part is stale or missing still names the file.
    base = wanted.rsplit(" [", 1)[0]
    return next((f for f in files if base in (f.name, f.model_name)), None)


def _scan_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if "model_index.json" in filenames and here != root:
            found.append(here)
            dirnames.clear()  # a diffusers folder's parts are not checkpoints of their own
            continue
        for name in filenames:
            lowered = name.lower()
            if lowered.endswith(CHECKPOINT_SUFFIXES) and SIDECAR_VAE + "." not in lowered:
                found.append(here / name)
        dirnames.sort()
    return sorted(found, key=lambda p: p.relative_to(root).as_posix().lower())


def _scan_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)),
                  key=lambda p: p.relative_to(root).as_posix().lower())
