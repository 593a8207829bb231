"""Prompt styles in A1111's styles.csv (name, prompt, negative_prompt): a style's text is merged into the
prompt, at `{prompt}` if it has the placeholder, else appended after a comma."""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from backend.errors import InvalidRequest

log = logging.getLogger(__name__)

FIELDS = ["name", "prompt", "negative_prompt"]
MAX_STYLES = 64  # styles applied to one request


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str


def merge(style_text: str, prompt: str) -> str:
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def merged_length(style_text: str, prompt: str) -> int:
    """len(merge(style_text, prompt)), computed without building the text."""
    count = style_text.count("{prompt}")
    if count:
        return len(style_text) + count * (len(prompt) - len("{prompt}"))
    return len(prompt.strip()) + len(style_text.strip()) + (2 if prompt.strip() and style_text.strip() else 0)


class StyleLibrary:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._styles: dict[str, Style] = {}
        self.reload()

    def reload(self) -> None:
        styles = {}
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                for row in csv.DictReader(f, skipinitialspace=True):
                    name = (row.get("name") or "").strip()
                    if name:
                        styles[name] = Style(name, row.get("prompt") or row.get("text") or "",
                                             row.get("negative_prompt") or "")
        except FileNotFoundError:
            pass
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            log.warning("could not read the styles file: %s", err)
        with self._lock:
            self._styles = styles

    def all(self) -> list[Style]:
        with self._lock:
            return list(self._styles.values())

    def apply(self, prompt: str, negative: str, names: list[str], max_chars: int | None = None) -> tuple[str, str]:
        """The prompts with the styles merged in, in order. With `max_chars`, each merge is checked as it is
        made: a style that repeats {prompt} doubles the text, so a few dozen could make gigabytes."""
        if len(names) > MAX_STYLES:
            raise InvalidRequest("styles", f"at most {MAX_STYLES} styles at once, got {len(names)}")
        with self._lock:
            missing = [n for n in names if n not in self._styles]
            chosen = [self._styles[n] for n in names if n in self._styles]
        if missing:
            raise InvalidRequest("styles", f"unknown style(s): {', '.join(missing)}")
        for style in chosen:
            for text, current, name in ((style.prompt, prompt, "prompt"),
                                        (style.negative_prompt, negative, "negative_prompt")):
                if max_chars is not None and merged_length(text, current) > max_chars:
                    raise InvalidRequest("styles", f"with style '{style.name}' the {name} would be longer than "
                                                   f"{max_chars} characters (set by --max-prompt-chunks)")
            prompt, negative = merge(style.prompt, prompt), merge(style.negative_prompt, negative)
        return prompt, negative

    def save(self, style: Style) -> None:
        """Add or replace a style; the file is rewritten atomically (never left half-written)."""
        if not style.name.strip():
            raise InvalidRequest("name", "a style needs a name")
        with self._lock:
            self._styles[style.name] = style
            rows = list(self._styles.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for s in rows:
                writer.writerow({"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt})
        os.replace(tmp, self.path)
