"""How deeply a JSON text nests, measured without parsing it: Python's parser (and every later json.dumps of the
result) recurses once per level, so untrusted JSON is measured before it is parsed."""

from __future__ import annotations

MAX_DEPTH = 64  # far deeper than any A1111 request or network metadata


def nesting_depth(raw: bytes | str) -> int:
    """Deepest [ / { nesting, counted outside strings."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def is_shallow(raw: bytes | str) -> bool:
    return nesting_depth(raw) <= MAX_DEPTH
