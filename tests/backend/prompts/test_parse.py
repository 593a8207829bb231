"""The prompt parser against A1111 1.10's own outputs (computed with its prompt_parser and stored as data)."""

import pytest

from backend.prompts.parse import parse_emphasis, split_and
from backend.prompts.schedule import prompt_schedule, text_at_step

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


# prompt -> A1111's get_learned_conditioning_prompt_schedules([prompt], 10)[0]
A1111_SCHEDULES = {
    "test": [[10, "test"]],
    "a [b:3]": [[3, "a "], [10, "a b"]],
    "a [b: 3]": [[3, "a "], [10, "a b"]],
    "a [[[b]]:2]": [[2, "a "], [10, "a [[b]]"]],
    "[(a:2):3]": [[3, ""], [10, "(a:2)"]],
    "a [b : c : 1] d": [[1, "a b  d"], [10, "a  c  d"]],
    "a[b:[c:d:2]:1]e": [[1, "abe"], [2, "ace"], [10, "ade"]],
    "a [unbalanced": [[10, "a [unbalanced"]],
    "a [b:.5] c": [[5, "a  c"], [10, "a b c"]],
    "((a][:b:c [d:3]": [[3, "((a][:b:c "], [10, "((a][:b:c d"]],
    "[a|(b:1.1)]": [[i, "a" if i % 2 else "(b:1.1)"] for i in range(1, 11)],
    "[fe|]male": [[i, "female" if i % 2 else "male"] for i in range(1, 11)],
    "[fe|||]male": [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)],
    "[a:b:1.0]": [[10, "a"]],
    "[a:b:0]": [[10, "b"]],
}


@pytest.mark.parametrize("prompt", list(A1111_SCHEDULES))
def test_prompt_schedules_equal_a1111(prompt):
    assert [list(entry) for entry in prompt_schedule(prompt, 10)] == A1111_SCHEDULES[prompt]


def test_text_at_step_uses_from_until_the_switch_step():
    schedule = prompt_schedule("[cat:dog:0.5]", 10)
    assert [text_at_step(schedule, i) for i in range(10)] == ["cat"] * 6 + ["dog"] * 4


def test_hires_pass_schedule_continues_past_the_first_pass():
    """A1111's doctest: with 10 first-pass and 10 hires steps, [b:.5] is already b, [b:1.5] switches half-way."""
    assert [list(e) for e in prompt_schedule("a [b:.5] c", 10, first_pass_steps=10)] == [[10, "a b c"]]
    assert [list(e) for e in prompt_schedule("a [b:1.5] c", 10, first_pass_steps=10)] == [[5, "a  c"], [10, "a b c"]]
