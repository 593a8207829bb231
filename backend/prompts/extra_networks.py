"""A1111's extra-network tags in prompts: `<lora:name:0.8>`, `<lora:name:te=1:unet=0.5:dyn=8>` (`lyco` is the
same), `<hypernet:name:1>`. Tags are removed from the text that is encoded; the prompt as typed is kept for the
infotext."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from backend.errors import InvalidRequest

TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


@dataclass(frozen=True)
class NetworkTag:
    kind: str
    name: str
    positional: tuple[str, ...] = ()
    named: tuple[tuple[str, str], ...] = ()
    text: str = ""  # as typed

    def _number(self, key: str, position: int, default: float) -> float:
        named = dict(self.named)
        raw = named.get(key, self.positional[position] if len(self.positional) > position else None)
        if raw is None:
            return default
        try:
            return float(raw)
        except ValueError as err:
            raise InvalidRequest("prompt", f"{self.text}: {key} must be a number, got {raw!r}") from err

    @property
    def te(self) -> float:
        return self._number("te", 0, 1.0)

    @property
    def unet(self) -> float:
        return self._number("unet", 1, self.te)

    @property
    def dyn(self) -> int | None:
        value = self._number("dyn", 2, -1.0)
        return None if value < 0 else int(value)


@dataclass
class ParsedPrompt:
    text: str  # without the tags
    tags: list[NetworkTag] = field(default_factory=list)


def parse_tags(prompt: str) -> ParsedPrompt:
    tags = []

    def take(match: re.Match) -> str:
        kind, args = match.group(1), match.group(2).split(":")
        positional = tuple(a for a in args[1:] if "=" not in a)
        named = tuple(tuple(a.split("=", 1)) for a in args[1:] if "=" in a)
        tags.append(NetworkTag(kind, args[0], positional, named, match.group(0)))
        return ""

    return ParsedPrompt(TAG.sub(take, prompt), tags)
