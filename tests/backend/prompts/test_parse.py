"""The prompt parser against A1111 1.10's own outputs (computed with its prompt_parser and stored as data)."""

import pytest

from backend.prompts.parse import parse_emphasis, split_and, unsupported_constructs

# prompt -> [(text, weight)], from A1111's parse_prompt_attention
A1111_EMPHASIS = {
    "normal text": [("normal text", 1.0)],
    "an (important) word": [("an ", 1.0), ("important", 1.1), (" word", 1.0)],
    "(unbalanced": [("unbalanced", 1.1)],
    "\\(literal\\]": [("(literal]", 1.0)],
    "(unnecessary)(parens)": [("unnecessaryparens", 1.1)],
    "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).": [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)],
    "a (b:1.5) [c] ((d))": [("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 0.9090909090909091), (" ", 1.0),
                            ("d", 1.2100000000000002)],
    "[[x]]": [("x", 0.8264462809917354)],
    "": [("", 1.0)],
    "a BREAK b": [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)],
    "stray) and ]": [("stray) and ]", 1.0)],
    "x:1.5) y": [("x:1.5) y", 1.0)],
    "a \\ b": [("a  b", 1.0)],
}


@pytest.mark.parametrize("prompt", list(A1111_EMPHASIS))
def test_emphasis_equals_a1111(prompt):
    got = [(f.text, f.weight) for f in parse_emphasis(prompt)]
    want = A1111_EMPHASIS[prompt]
    assert [t for t, _ in got] == [t for t, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want], rel=1e-12)


def test_and_splits_subprompts_with_weights():
    assert split_and("a cat :1.2 AND a dog :0.8") == [("a cat", 1.2), (" a dog", 0.8)]  # A1111 keeps the leading space
    assert split_and("BRAND new") == [("BRAND new", 1.0)]


def test_constructs_that_need_the_per_step_loop_are_named():
    assert unsupported_constructs("a [cat:dog:0.5]") == ["prompt editing/alternation ([a:b:when], [a|b])"]
    assert unsupported_constructs("[cat|dog]") == ["prompt editing/alternation ([a:b:when], [a|b])"]
    assert unsupported_constructs("a AND b") == ["AND"]
    assert unsupported_constructs("(a:1.2) [b] (c)") == []
