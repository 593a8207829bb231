"""SHA-256 of model files (checkpoints, VAEs, embeddings, networks), read in blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, offset: int = 0) -> str:
    """Hex SHA-256 of the file's bytes from `offset` on."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
