"""Prompt editing and alternation: `[from:to:when]`, `[to:when]`, `[from::when]`, `[a|b|c]`, nested as A1111
1.10 allows. A prompt becomes a list of (last step, text) pairs; the text then goes through emphasis parsing.

A `when` with a dot is a fraction of the steps (`min(steps, int(v * steps))`), without one a step number; the
"from" text is used while the 0-based step index is <= that step. Alternation picks option `step % count`
(1-based steps). A prompt that does not parse as a whole is used as it is, as A1111 does. Round and square
emphasis brackets are kept as text (they are parsed later); at the top level a bracket that opens or closes
nothing is plain text too."""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))\s*\]")


@dataclass
class Scheduled:
    before: list
    after: list
    when_text: str


@dataclass
class Alternate:
    options: list[list]


class _NoParse(Exception):
    pass


class _Parser:
    """Recursive descent over the prompt; nodes are str, Scheduled, Alternate (emphasis stays text)."""

    def __init__(self, text: str):
        self.text = text

    def top(self) -> list:
        nodes, pos = [], 0
        while pos < len(self.text):
            part, pos = self.sequence(pos)
            nodes += part
            if pos < len(self.text):  # a bracket, colon or bar that starts nothing: plain text here
                nodes.append(self.text[pos])
                pos += 1
        return nodes

    def sequence(self, pos: int) -> tuple[list, int]:
        """As much prompt as parses from `pos`; stops before `:`, `|`, a closing bracket, or a failed bracket."""
        nodes = []
        while pos < len(self.text):
            char = self.text[pos]
            if char in "([":
                try:
                    node, pos = self.bracket(pos)
                except _NoParse:
                    return nodes, pos
                nodes += node
                continue
            match = _PLAIN.match(self.text, pos)
            if not match:
                break
            nodes.append(match.group(0))
            pos = match.end()
        return nodes, pos

    def bracket(self, pos: int) -> tuple[list, int]:
        if self.text[pos] == "(":
            return self.round(pos)
        for attempt in (self.scheduled, self.alternate, self.square):
            try:
                return attempt(pos)
            except _NoParse:
                continue
        raise _NoParse

    def round(self, pos: int) -> tuple[list, int]:
        inner, pos = self.sequence(pos + 1)
        nodes = ["(", *inner]
        if self._at(pos, ":"):
            weight, pos = self.sequence(pos + 1)
            nodes += [":", *weight]
        pos = self._expect(pos, ")")
        return [*nodes, ")"], pos

    def square(self, pos: int) -> tuple[list, int]:
        inner, pos = self.sequence(pos + 1)
        pos = self._expect(pos, "]")
        return ["[", *inner, "]"], pos

    def scheduled(self, pos: int) -> tuple[list, int]:
        first, pos = self.sequence(pos + 1)
        pos = self._expect(pos, ":")
        number = _NUMBER.match(self.text, pos)
        if number:  # [to:when]
            return [Scheduled([], first, number.group(1))], number.end()
        second, pos = self.sequence(pos)
        pos = self._expect(pos, ":")
        number = _NUMBER.match(self.text, pos)
        if not number:
            raise _NoParse
        return [Scheduled(first, second, number.group(1))], number.end()

    def alternate(self, pos: int) -> tuple[list, int]:
        first, pos = self.sequence(pos + 1)
        options = [first]
        while self._at(pos, "|"):
            option, pos = self.sequence(pos + 1)
            options.append(option)
        if len(options) < 2:
            raise _NoParse
        pos = self._expect(pos, "]")
        return [Alternate(options)], pos

    def _at(self, pos: int, char: str) -> bool:
        return pos < len(self.text) and self.text[pos] == char

    def _expect(self, pos: int, char: str) -> int:
        if not self._at(pos, char):
            raise _NoParse
        return pos + 1


@dataclass(frozen=True)
class _Clock:
    """How `when` numbers count: a fraction of `steps`, or a step number. In a hires fix second pass the
    numbers continue past the first pass (A1111): 1.5 is half-way through the second pass, and a step number
    counts from the first pass's end."""

    steps: int
    int_offset: int = 0
    fraction_offset: float = 0.0

    def when(self, node: Scheduled) -> int:
        value = float(node.when_text)
        if "." in node.when_text:
            value = (value - self.fraction_offset) * self.steps
        else:
            value = value - self.int_offset
        return min(self.steps, int(value))


def _switch_steps(nodes: list, clock: _Clock, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, Scheduled):
            when = clock.when(node)
            if when >= 1:
                found.add(when)
            _switch_steps(node.before, clock, found)
            _switch_steps(node.after, clock, found)
        elif isinstance(node, Alternate):
            found.update(range(1, clock.steps + 1))
            for option in node.options:
                _switch_steps(option, clock, found)


def _text_at(nodes: list, step: int, clock: _Clock) -> str:
    parts = []
    for node in nodes:
        if isinstance(node, Scheduled):
            parts.append(_text_at(node.before if step <= clock.when(node) else node.after, step, clock))
        elif isinstance(node, Alternate):
            parts.append(_text_at(node.options[(step - 1) % len(node.options)], step, clock))
        else:
            parts.append(node)
    return "".join(parts)


def prompt_schedule(prompt: str, steps: int, first_pass_steps: int | None = None) -> list[tuple[int, str]]:
    """[(last step it is used at, text), ...] in step order; the last entry's step is `steps`. For a hires fix
    second pass, `first_pass_steps` is the first pass's step count."""
    clock = _Clock(steps) if first_pass_steps is None else _Clock(steps, first_pass_steps, 1.0)
    try:
        nodes = _Parser(prompt).top()
    except _NoParse:
        return [(steps, prompt)]
    switch = {steps}
    _switch_steps(nodes, clock, switch)
    return [(step, _text_at(nodes, step, clock)) for step in sorted(switch)]


def text_at_step(schedule: list[tuple[int, str]], step_index: int) -> str:
    """The text used at 0-based sampling step `step_index`."""
    return next((text for last, text in schedule if step_index <= last), schedule[-1][1])
