"""A1111's prompt language, as text: emphasis weights, BREAK and AND (prompt editing and alternation are in
`schedule.py`). Encoding the result is `encode.py`'s job.

Semantics follow A1111 1.10's `parse_prompt_attention`: `(x)` multiplies by 1.1, `[x]` divides by 1.1,
`(x:w)` multiplies by w, nesting multiplies, `\\(` `\\)` `\\[` `\\]` `\\\\` are literal, brackets left open at the
end still apply to everything after them, a closing bracket without an opener stays as text, and neighbours
of equal weight are merged."""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND = 1.1
SQUARE = 1 / 1.1
BREAK_WEIGHT = -1.0  # marks a BREAK fragment: it starts a new 75-token chunk

# One token of emphasis syntax at a time; the order of the alternatives matters (escapes first).
_TOKEN = re.compile(r"""
    \\[()\[\]\\]             # an escaped bracket or backslash: literal
  | \\                       # a lone backslash: literal
  | [(\[]                    # an opening bracket
  | :\s*([+-]?[.\d]+)\s*\)   # an explicit weight closing a round bracket
  | [)\]]                    # a closing bracket
  | [^\\()\[\]:]+            # plain text
  | :                        # a colon that is not a weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


@dataclass
class Fragment:
    text: str
    weight: float

    @property
    def is_break(self) -> bool:
        return self.weight == BREAK_WEIGHT and self.text == "BREAK"


def parse_emphasis(prompt: str) -> list[Fragment]:
    """Prompt text -> fragments with their emphasis weights (BREAK becomes its own marker fragment)."""
    fragments: list[Fragment] = []
    open_round: list[int] = []  # index of the first fragment inside each open bracket
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment.weight *= factor

    for match in _TOKEN.finditer(prompt):
        token, explicit = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append(Fragment(token[1:], 1.0))  # a lone backslash becomes nothing, as in A1111
        elif token == "(":
            open_round.append(len(fragments))
        elif token == "[":
            open_square.append(len(fragments))
        elif explicit is not None and open_round:
            scale_from(open_round.pop(), _number(explicit))
        elif token == ")" and open_round:
            scale_from(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), SQUARE)
        else:
            _add_text(fragments, token)
    for start in open_round:
        scale_from(start, ROUND)
    for start in open_square:
        scale_from(start, SQUARE)
    return _merge_equal_neighbours(fragments) or [Fragment("", 1.0)]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0


def _add_text(fragments: list[Fragment], text: str) -> None:
    """Plain text (or a stray bracket/colon, kept as text), split at BREAK."""
    for i, part in enumerate(_BREAK.split(text)):
        if i > 0:
            fragments.append(Fragment("BREAK", BREAK_WEIGHT))
        fragments.append(Fragment(part, 1.0))


def _merge_equal_neighbours(fragments: list[Fragment]) -> list[Fragment]:
    merged: list[Fragment] = []
    for fragment in fragments:
        if merged and merged[-1].weight == fragment.weight:
            merged[-1].text += fragment.text
        else:
            merged.append(fragment)
    return merged


def split_and(prompt: str) -> list[tuple[str, float]]:
    """`a cat :1.2 AND a dog` -> [("a cat", 1.2), ("a dog", 1.0)] (composable diffusion's subprompts)."""
    parts = []
    for subprompt in _AND.split(prompt):
        match = _SUBPROMPT_WEIGHT.search(subprompt)
        text, weight = match.groups() if match else (subprompt, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts
