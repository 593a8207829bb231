"""Textual-inversion embeddings from the embeddings folders, as A1111 1.10 loads and uses them.

Files are found recursively and named by their stem. Formats: A1111's `.pt` (`string_to_param`), diffusers'
`.bin` (`{token: tensor}`), `.safetensors` with one tensor (`emb_params`), and SDXL files with `clip_l` and
`clip_g`. Pickles go through the restricted unpickler. An embedding whose width does not fit the loaded model
is skipped and reported. In a prompt, an embedding's name is matched on its tokens; its vectors replace those
tokens (they count as that many tokens, never straddle two chunks, and take the surrounding emphasis)."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.errors import BackendError
from backend.hashing import sha256_file
from backend.loading.checkpoint_file import open_checkpoint, read_pickle

log = logging.getLogger(__name__)

SUFFIXES = (".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: dict[str, torch.Tensor]  # per text encoder key ("clip_l", "clip_g") or "" for single-encoder files
    count: int  # vectors (tokens) it stands for
    width: int  # total width: 768 (SD1), 1024 (SD2), 768 + 1280 (SDXL)
    sha256: str
    step: int | None = None
    checkpoint: str | None = None
    checkpoint_name: str | None = None

    @property
    def short_hash(self) -> str:
        return self.sha256[:12]

    def for_encoder(self, key: str, single: bool) -> torch.Tensor:
        """The vectors for one text encoder ("clip_l"/"clip_g" on SDXL; the only tensor otherwise)."""
        return self.vectors[""] if single else self.vectors[key]


def read_embedding(path: Path) -> Embedding:
    """One file -> an Embedding; raises BackendError (or ValueError) when it is not an embedding."""
    if path.suffix.lower() == ".safetensors":
        tensors = open_checkpoint(path)
        data: dict = {name: tensors[name] for name in tensors}
    else:
        data = read_pickle(path)
    if not isinstance(data, dict):
        raise ValueError("not a dictionary of tensors")
    digest = sha256_file(path)
    meta = dict(step=_int_or_none(data.get("step")), checkpoint=_str_or_none(data.get("sd_checkpoint")),
                checkpoint_name=_str_or_none(data.get("sd_checkpoint_name")))
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if len(params) != 1:
            raise ValueError("it holds more than one term")
        vec = _matrix(next(iter(params.values())))
        return Embedding(path.stem, {"": vec}, vec.shape[0], vec.shape[-1], digest, **meta)
    if "clip_l" in data and "clip_g" in data:
        vectors = {k: _matrix(data[k]) for k in ("clip_l", "clip_g")}
        width = vectors["clip_l"].shape[-1] + vectors["clip_g"].shape[-1]
        return Embedding(path.stem, vectors, vectors["clip_g"].shape[0], width, digest, **meta)
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(data) == 1 and len(tensors) == 1:
        vec = _matrix(tensors[0])
        return Embedding(path.stem, {"": vec}, vec.shape[0], vec.shape[-1], digest, **meta)
    raise ValueError("neither a textual-inversion embedding nor a diffusers concept")


def _matrix(tensor) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError("its vectors are not a tensor")
    tensor = tensor.detach().to(torch.float32)
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor.reshape(-1, tensor.shape[-1])


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _str_or_none(value) -> str | None:
    return str(value) if isinstance(value, str) else None


class EmbeddingLibrary:
    """Every embedding in the folders (rescanned by `refresh`). Thread-safe; `version` changes on refresh so
    cached conditionings made with older embeddings are not reused."""

    def __init__(self, folders: list[Path]):
        self.folders = folders
        self._lock = threading.Lock()
        self._embeddings: dict[str, Embedding] = {}
        self._errors: dict[str, str] = {}
        self.version = 0
        self.refresh()

    def refresh(self) -> None:
        found, errors = {}, {}
        for path in _scan(self.folders):
            try:
                embedding = read_embedding(path)
            except (BackendError, ValueError, OSError, KeyError) as err:
                log.warning("skipping embedding %s: %s", path.name, err)
                errors[path.stem] = str(err)
                continue
            found.setdefault(embedding.name, embedding)
        with self._lock:
            self._embeddings, self._errors = found, errors
            self.version += 1

    def all(self) -> dict[str, Embedding]:
        with self._lock:
            return dict(self._embeddings)

    def split_by_fit(self, width: int) -> tuple[dict[str, Embedding], dict[str, Embedding]]:
        """(usable with a model whose text width is `width`, skipped because they do not fit)."""
        everything = self.all()
        loaded = {n: e for n, e in everything.items() if e.width == width}
        return loaded, {n: e for n, e in everything.items() if n not in loaded}


def _scan(folders: list[Path]) -> list[Path]:
    paths = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for root, _, names in os.walk(folder, followlinks=False):
            for name in sorted(names):
                path = Path(root) / name
                if name.lower().endswith(SUFFIXES) and path.is_file() and path.stat().st_size > 0:
                    paths.append(path)
    return sorted(paths, key=lambda p: p.name.lower())


@dataclass(frozen=True)
class EmbeddingMatcher:
    """Finds embedding names in token sequences: by first token, longest name first."""

    by_first_token: dict[int, list[tuple[list[int], Embedding]]]
    version: int

    @staticmethod
    def build(embeddings: dict[str, Embedding], tokenize, version: int) -> EmbeddingMatcher:
        index: dict[int, list[tuple[list[int], Embedding]]] = {}
        for name, embedding in embeddings.items():
            ids = tokenize(name)
            if ids:
                index.setdefault(ids[0], []).append((ids, embedding))
        for entries in index.values():
            entries.sort(key=lambda entry: len(entry[0]), reverse=True)
        return EmbeddingMatcher(index, version)

    def match(self, tokens: list[int], position: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's tokens start at `position`, and how many tokens the name takes."""
        for ids, embedding in self.by_first_token.get(tokens[position], ()):
            if tokens[position : position + len(ids)] == ids:
                return embedding, len(ids)
        return None
