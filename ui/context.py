"""What the UI needs from the backend, passed in by app.py (no globals)."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from backend.service import GenerationService

SCRATCH_MAX_AGE_S = 600  # long after Gradio has copied a download into its own cache


@dataclass
class UiContext:
    service: GenerationService
    # Our own temporary folder for downloads made on request (zips); removed by `close`.
    scratch_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sd-webui-ui-")))

    @property
    def local_only(self) -> bool:
        """Server-folder features are shown only where the service allows them (it checks every call itself)."""
        return self.service.settings.local_only

    @staticmethod
    def owner(request) -> str:
        """Who a UI event comes from: the logged-in account, else the browser session (gr.Request)."""
        if request is None:
            return ""
        user = getattr(request, "username", None)
        return user if user else f"session {getattr(request, 'session_hash', '') or ''}"

    def new_scratch_file(self, name: str) -> Path:
        """A fresh path for a download; files older than SCRATCH_MAX_AGE_S are removed first, so clicks do
        not pile files up in the temp folder."""
        cutoff = time.time() - SCRATCH_MAX_AGE_S
        for old in self.scratch_dir.glob("*/*"):
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old.parent, ignore_errors=True)
        folder = self.scratch_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder / name

    def close(self) -> None:
        shutil.rmtree(self.scratch_dir, ignore_errors=True)

    def checkpoint_titles(self) -> list[str]:
        return [c.title for c in self.service.checkpoints()]

    def vae_choices(self) -> list[str]:
        return ["Automatic", "None", *[v.name for v in self.service.vaes()]]

    def current_title(self) -> str | None:
        current = self.service.current_checkpoint()
        return current.title if current else None
