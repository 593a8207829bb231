"""Loopback on the tiny SD1 checkpoint: each loop is the img2img request A1111 makes from the last picture, with
the seed counting up and the strength on A1111's curve."""

import math

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.scripts.loopback import LoopbackSettings, strength


def _picture():
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _req(**kw):
    base = dict(prompt="a harbour", steps=4, width=64, height=64, seed=20, sampler_name="Euler",
                checkpoint="sd1.safetensors", save_images=False, init_image=_picture(), denoising_strength=0.8)
    base.update(kw)
    return GenerationRequest(**base)


def test_denoising_curves():
    linear = LoopbackSettings(loops=4, final_denoising_strength=0.2, curve="Linear")
    assert [round(strength(0.8, linear, i), 6) for i in range(4)] == [0.8, 0.6, 0.4, 0.2]
    aggressive = LoopbackSettings(4, 0.2, "Aggressive")
    assert strength(0.8, aggressive, 1) == pytest.approx(0.8 - 0.6 * math.sin(math.pi / 6))
    lazy = LoopbackSettings(4, 0.2, "Lazy")
    assert strength(0.8, lazy, 1) == pytest.approx(0.8 - 0.6 * (1 - math.cos(math.pi / 6)))
    assert strength(0.8, LoopbackSettings(1, 0.2, "Linear"), 0) == 0.8


def test_each_loop_is_the_request_a1111_makes(service):
    script = service.script("Loopback", [3, 0.5, "Linear"])
    result = service.generate(_req(script=script))
    assert len(result.images) == 4 and result.seeds == [20, 20, 21, 22]
    picture = _picture()
    for n, (seed, denoising) in enumerate([(20, 0.8), (21, 0.65), (22, 0.5)]):
        picture = service.generate(_req(init_image=picture, seed=seed, denoising_strength=denoising)).images[0]
        assert np.array_equal(np.asarray(result.images[n + 1]), np.asarray(picture)), n
    assert "Final denoising strength: 0.5, Denoising curve: Linear" in result.infotexts[3]
    assert "Denoising strength: 0.8," in result.infotexts[3]  # A1111 answers with the first loop's parameters


def test_interrogation_is_refused_by_name(service):
    with pytest.raises(InvalidRequest, match="CLIP"):
        service.script("Loopback", [3, 0.5, "Linear", "CLIP"])
    with pytest.raises(InvalidRequest, match="unknown script 'Loopback'"):
        service.script("Loopback", [], "txt2img")
