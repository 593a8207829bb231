"""What the UI needs from the backend, passed in by app.py (no globals)."""

from __future__ import annotations

from dataclasses import dataclass

from backend.service import GenerationService


@dataclass
class UiContext:
    service: GenerationService
    local_only: bool = True  # served to this machine only (no --listen/--share): "open folder" makes sense

    def checkpoint_titles(self) -> list[str]:
        return [c.title for c in self.service.checkpoints()]

    def vae_choices(self) -> list[str]:
        return ["Automatic", "None", *[v.name for v in self.service.vaes()]]

    def current_title(self) -> str | None:
        current = self.service.current_checkpoint()
        return current.title if current else None
