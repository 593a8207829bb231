"""Prompts from file or textbox, and Prompt matrix, on the tiny SD1 checkpoint: each picture equals the request
A1111 would make for it alone."""

import numpy as np
import pytest

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.grid import make_grid
from backend.scripts import prompt_matrix, prompts_from_file


def _req(**kw):
    base = dict(prompt="", negative_prompt="", steps=2, width=64, height=64, seed=5, sampler_name="Euler",
                checkpoint="sd1.safetensors", save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


# ------------------------------------------------------------------ prompts from file or textbox

def test_a1111_line_options():
    line = '--prompt "a dog" on a hill --negative_prompt ugly face --steps 3 --seed 7 --cfg_scale 5.5 ' \
           '--sampler_name DDIM --width 64 --height 64 --tiling true --sd_model sd1'
    assert prompts_from_file.parse_options(line) == {
        "prompt": "a dog on a hill", "negative_prompt": "ugly face", "steps": 3, "seed": 7, "cfg_scale": 5.5,
        "sampler_name": "DDIM", "width": 64, "height": 64, "tiling": True, "sd_model": "sd1"}
    plain = prompts_from_file.parse_line("a sunset -- wide", 4)
    assert plain.fields == {"prompt": "a sunset -- wide"} and "line 4 was used as a prompt" in plain.warning
    with pytest.raises(InvalidRequest, match="--outpath_samples is refused"):
        prompts_from_file.parse_options("--outpath_samples /etc --steps 3")


def test_each_line_equals_its_own_request(service):
    text = "a dog\n\n  --prompt \"a cat\" --steps 3 --seed 9\n--negative_prompt blurry"
    script = service.script("Prompts from file or textbox", [True, False, "start", text], "txt2img")
    result = service.generate(_req(prompt="photo", script=script))
    assert len(result.images) == 3
    assert _same(result.images[0], service.generate(_req(prompt="a dog photo", seed=5)).images[0])
    assert _same(result.images[1], service.generate(_req(prompt="a cat photo", steps=3, seed=9)).images[0])
    # the seed moved on by batch size x count per line; the request's negative prompt was empty: replaced
    assert _same(result.images[2], service.generate(_req(prompt="photo", negative_prompt="blurry", seed=7)).images[0])
    assert result.seeds == [5, 9, 7] and "Steps: 3" in result.infotexts[1]


def test_prompts_at_the_end_and_a_bad_line_is_a_422(service):
    script = service.script("Prompts from file or textbox", [False, True, "end", "a dog"], "txt2img")
    result = service.generate(_req(prompt="photo", seed=-1, script=script))
    assert result.infotexts[0].startswith("photo a dog\n")
    script = service.script("Prompts from file or textbox", [False, False, "start", "--steps 3 --sampler_name Nope"],
                            "txt2img")
    with pytest.raises(InvalidRequest, match="line 1"):
        service.submit(_req(script=script))


# ------------------------------------------------------------------ prompt matrix

def test_matrix_prompts_in_a1111s_order():
    parts = "a cat|red|in a hat".split("|")
    assert prompt_matrix.prompts(parts, prompt_matrix.MatrixSettings()) == [
        "a cat", "a cat, red", "a cat, in a hat", "a cat, red, in a hat"]
    at_start = prompt_matrix.MatrixSettings(put_at_start=True, delimiter="space")
    assert prompt_matrix.prompts(parts, at_start)[3] == "red in a hat a cat"


def test_matrix_pictures_and_grid(service):
    script = service.script("Prompt matrix", [False, True, "positive", "comma", 0], "txt2img")
    result = service.generate(_req(prompt="a cat|red|blue", seed=11, script=script))
    assert len(result.images) == 5 and result.seeds == [11, 11, 12, 13, 14]
    for picture, (prompt, seed) in zip(result.images[1:], [("a cat", 11), ("a cat, red", 12), ("a cat, blue", 13),
                                                            ("a cat, red, blue", 14)], strict=True):
        assert _same(picture, service.generate(_req(prompt=prompt, seed=seed)).images[0])
    expected = prompt_matrix.matrix_grid(result.images[1:], ["a cat", "red", "blue"], 0)
    assert _same(result.images[0], expected)
    plain = make_grid(result.images[1:], rows=2)
    assert expected.width == plain.width + 48 and expected.height > plain.height  # both legends


def test_matrix_needs_a_bar(service):
    script = service.script("Prompt matrix", [], "txt2img")
    with pytest.raises(InvalidRequest, match="no `|`"):
        service.submit(_req(prompt="a cat", script=script))
