"""A1111's DDIM, DDIM CFG++ and PLMS (its own timestep samplers, not k-diffusion's) equal A1111's image: the
reference drives diffusers' DDIM update over A1111's timesteps (tests/fixtures/a1111_reference.py)."""

import pytest

from backend.generation.requests import GenerationRequest
from backend.generation.timestep_samplers import a1111_timesteps
from tests.fixtures.a1111_reference import a1111_timestep_txt2img
from tests.fixtures.reference import max_pixel_diff, reference_conds


def _ours(service, sampler, steps=8, **kw):
    kw.setdefault("cfg_scale", 12.0)  # strong guidance: the tiny model's epsilons differ little otherwise
    req = GenerationRequest(prompt="a lighthouse at dusk", negative_prompt="fog", steps=steps, width=64, height=64,
                            seed=21, sampler_name=sampler, checkpoint="sd1.safetensors", save_images=False, **kw)
    return service.generate(req)


def _theirs(model, sampler, steps=8, eta=0.0):
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    return a1111_timestep_txt2img(model.unet, model.vae, cond, uncond, sampler, steps, 12.0, [21], 64, 64, eta=eta)



def test_a1111_timesteps_have_its_quirks():
    assert a1111_timesteps(8) == [1, 126, 251, 376, 501, 626, 751, 876]
    assert len(a1111_timesteps(7)) == 8 and a1111_timesteps(3)[-1] == 999


@pytest.mark.parametrize("steps", [8, 7])
@pytest.mark.parametrize("sampler", ["DDIM", "DDIM CFG++", "PLMS"])
def test_timestep_sampler_equals_a1111(service, tiny, sampler, steps):
    ours = _ours(service, sampler, steps)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, steps)[0]) <= 1
    assert f"Sampler: {sampler}, " in ours.infotexts[0]


def test_ddim_eta_draws_each_images_noise_as_a1111(service, tiny):
    ours = _ours(service, "DDIM", eta=0.5)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], "DDIM", eta=0.5)[0]) <= 1
    assert "Eta DDIM: 0.5" in ours.infotexts[0]
    assert max_pixel_diff(ours.images[0], _ours(service, "DDIM").images[0]) > 3


def test_cfgpp_differs_from_ddim(service):
    assert max_pixel_diff(_ours(service, "DDIM").images[0], _ours(service, "DDIM CFG++").images[0]) > 3
