"""Finds checkpoints and VAEs under the models folders and gives each its A1111 title and short hash."""

from __future__ import annotations

import json
import logging
import os
import queue
import stat
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from backend.errors import ModelNotFound
from backend.hashing import sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt")
SIDECAR_VAE = ".vae"
# Files up to this size are hashed while scanning (instant); larger ones in the background, so that startup
# and refresh never wait minutes for multi-GB checkpoints. Until then their title has no hash part.
HASH_NOW_BYTES = 64 * 1024 * 1024


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

    def cached(self, path: Path) -> str | None:
        """The hash if it is known for the file as it is now, without reading the file."""
        key, stamp = _key_and_stamp(path)
        with self._lock:
            entry = self._entries.get(key)
        return entry["sha256"] if entry and entry["stamp"] == stamp else None

    def sha256(self, path: Path) -> str:
        found = self.cached(path)
        if found is not None:
            return found
        key, stamp = _key_and_stamp(path)
        digest = _hash_file(path)
        with self._lock:
            self._entries[key] = {"stamp": stamp, "sha256": digest}
            try:
                self._write()
            except OSError as err:  # a read-only models folder still works, it just re-hashes next time
                log.warning("could not write the hash cache: %s", err)
        return digest

    def _write(self) -> None:
        # A unique temporary file, then an atomic rename: two processes sharing the cache never clash.
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self._entries, indent=1))
        os.replace(tmp, self.cache_file)


def _key_and_stamp(path: Path) -> tuple[str, list[int]]:
    info = path.stat()
    return str(path.resolve()), [info.st_size, info.st_mtime_ns]


def _hash_file(path: Path) -> str:
    log.info("hashing %s (once; the result is cached)", path.name)
    return sha256_file(path)


class ModelRegistry:
    """What is in the checkpoint and VAE folders. `refresh()` rescans; lookups only return found files.
    Large files are hashed by a background thread; their entries gain the hash when it is done."""

    def __init__(self, checkpoint_dir: Path, vae_dir: Path, hashes: HashCache):
        self.checkpoint_dir = checkpoint_dir
        self.vae_dir = vae_dir
        self.hashes = hashes
        self._lock = threading.Lock()
        self._checkpoints: list[ModelFile] = []
        self._vaes: list[ModelFile] = []
        self._to_hash: queue.Queue[Path] = queue.Queue()
        threading.Thread(target=self._hash_in_background, name="model-hasher", daemon=True).start()
        self.refresh()

    def refresh(self) -> None:
        checkpoints = [self._model_file(p, self.checkpoint_dir) for p in _scan_checkpoints(self.checkpoint_dir)]
        vaes = [self._model_file(p, self.vae_dir) for p in scan_files(self.vae_dir, VAE_SUFFIXES)]
        with self._lock:
            self._checkpoints, self._vaes = checkpoints, vaes

    def _model_file(self, path: Path, root: Path) -> ModelFile:
        name = path.relative_to(root).as_posix()
        if path.is_dir():
            return ModelFile(path, name, None)
        digest = self.hashes.cached(path)
        if digest is None and path.stat().st_size <= HASH_NOW_BYTES:
            digest = self.hashes.sha256(path)
        elif digest is None:
            self._to_hash.put(path)
        return ModelFile(path, name, digest)

    def _hash_in_background(self) -> None:
        while True:
            path = self._to_hash.get()
            try:
                digest = self.hashes.sha256(path)
            except OSError as err:
                log.warning("could not hash %s: %s", path.name, err)
                continue
            with self._lock:
                self._checkpoints = [replace(f, sha256=digest) if f.path == path else f for f in self._checkpoints]
                self._vaes = [replace(f, sha256=digest) if f.path == path else f for f in self._vaes]

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
            raise ModelNotFound(f"checkpoint '{wanted}' not found in the checkpoint folder ({self.checkpoint_dir.name})")
        return found

    def find_vae(self, wanted: str) -> ModelFile:
        found = _match(self.vaes, wanted)
        if found is None:
            raise ModelNotFound(f"VAE '{wanted}' not found in the VAE folder ({self.vae_dir.name})")
        return found

    def sidecar_vae(self, checkpoint: ModelFile) -> Path | None:
        """`<name>.vae.safetensors` (or .pt/.ckpt) beside a checkpoint file."""
        if checkpoint.is_diffusers_folder:
            return None
        stem = checkpoint.path.with_suffix("")
        for suffix in VAE_SUFFIXES:
            candidate = stem.with_name(stem.name + SIDECAR_VAE + suffix)
            if candidate.is_file():  # stat only: True for regular files, never for FIFOs or devices
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


def _walk(root: Path):
    """os.walk over `root`, following symlinked folders but never into a loop: a folder reached again (same
    device and inode) is pruned. Unreadable folders are logged and skipped."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_log_walk_error):
        try:
            info = os.stat(dirpath)
        except OSError:
            dirnames.clear()
            continue
        if (info.st_dev, info.st_ino) in seen:
            log.warning("skipping %s: a link back into a folder already scanned", Path(dirpath).name)
            dirnames.clear()
            continue
        seen.add((info.st_dev, info.st_ino))
        dirnames.sort()
        yield Path(dirpath), dirnames, sorted(filenames)


def _log_walk_error(err: OSError) -> None:
    log.warning("skipping an unreadable folder: %s", err.strerror)


def _is_regular_file(path: Path) -> bool:
    """A readable regular file (through symlinks). Dangling or looping links, FIFOs, sockets and devices (a
    link to /dev/zero, say) are not: they are never opened, so nothing hangs or spins on them."""
    try:
        info = os.stat(path)
    except OSError as err:
        log.warning("skipping %s: %s", path.name, err.strerror)
        return False
    if not stat.S_ISREG(info.st_mode):
        log.warning("skipping %s: not a regular file", path.name)
        return False
    if not os.access(path, os.R_OK):
        log.warning("skipping %s: not readable", path.name)
        return False
    return True


def _scan_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for here, dirnames, filenames in _walk(root):
        if "model_index.json" in filenames and here != root:
            found.append(here)
            dirnames.clear()  # a diffusers folder's parts are not checkpoints of their own
            continue
        for name in filenames:
            lowered = name.lower()
            if lowered.endswith(CHECKPOINT_SUFFIXES) and SIDECAR_VAE + "." not in lowered \
                    and _is_regular_file(here / name):
                found.append(here / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix().lower())


def scan_files(root: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Readable regular files under `root` (links followed safely) with one of `suffixes`, by lower-case path."""
    if not root.is_dir():
        return []
    found = [here / name for here, _, filenames in _walk(root) for name in filenames
             if name.lower().endswith(suffixes) and _is_regular_file(here / name)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix().lower())
