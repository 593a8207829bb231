"""A1111's DDIM, DDIM CFG++, PLMS and UniPC (its own timestep samplers, not k-diffusion's) equal A1111's image:
the reference drives diffusers' DDIM and UniPC updates over A1111's timesteps and UniPC's continuous time grid
(tests/fixtures/a1111_reference.py)."""

import pytest

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.generation.timestep_samplers import a1111_timesteps
from backend.samplers import UniPCSettings
from backend.options import request_fields
from tests.fixtures.a1111_reference import a1111_timestep_txt2img
from tests.fixtures.reference import max_pixel_diff, reference_conds


def _ours(service, sampler, steps=8, **kw):
    kw.setdefault("cfg_scale", 12.0)  # strong guidance: the tiny model's epsilons differ little otherwise
    kw.setdefault("checkpoint", "sd1.safetensors")
    req = GenerationRequest(prompt="a lighthouse at dusk", negative_prompt="fog", steps=steps, width=64, height=64,
                            seed=21, sampler_name=sampler, save_images=False, **kw)
    return service.generate(req)


def _theirs(model, sampler, steps=8, eta=0.0, seed=21, **kw):
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    return a1111_timestep_txt2img(model.unet, model.vae, cond, uncond, sampler, steps, 12.0, [seed], 64, 64,
                                  eta=eta, **kw)


def test_a1111_timesteps_have_its_quirks():
    assert a1111_timesteps(8) == [1, 126, 251, 376, 501, 626, 751, 876]
    assert len(a1111_timesteps(7)) == 8 and a1111_timesteps(3)[-1] == 999


@pytest.mark.parametrize("steps", [8, 7])
@pytest.mark.parametrize("sampler", ["DDIM", "DDIM CFG++", "PLMS", "UniPC"])
def test_timestep_sampler_equals_a1111(service, tiny, sampler, steps):
    ours = _ours(service, sampler, steps)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, steps)[0]) <= 1
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, steps, seed=22)[0]) > 3  # control
    assert f"Sampler: {sampler}, " in ours.infotexts[0]


def test_ddim_eta_draws_each_images_noise_as_a1111(service, tiny):
    ours = _ours(service, "DDIM", eta=0.5)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], "DDIM", eta=0.5)[0]) <= 1
    assert "Eta DDIM: 0.5" in ours.infotexts[0]
    assert max_pixel_diff(ours.images[0], _ours(service, "DDIM").images[0]) > 3


def test_cfgpp_differs_from_ddim(service):
    assert max_pixel_diff(_ours(service, "DDIM").images[0], _ours(service, "DDIM CFG++").images[0]) > 3


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC"])
def test_timestep_samplers_equal_a1111_on_sdxl_and_sd2_v(service, tiny, sampler):
    for family, checkpoint in (("sdxl", "sdxl.safetensors"), ("sd2", "sd2-v.safetensors")):
        model = tiny[family]
        ours = _ours(service, sampler, checkpoint=checkpoint)
        theirs = _theirs(model, sampler, sdxl=family == "sdxl", v_prediction=model.v_prediction)
        assert max_pixel_diff(ours.images[0], theirs[0]) <= 1, family
        other = _theirs(model, sampler, seed=22, sdxl=family == "sdxl", v_prediction=model.v_prediction)
        assert max_pixel_diff(ours.images[0], other[0]) > 3, family  # control


@pytest.mark.parametrize("steps", [5, 3])
def test_unipc_lowers_its_order_as_a1111(service, tiny, steps):
    ours = _ours(service, "UniPC", steps).images[0]
    assert max_pixel_diff(ours, _theirs(tiny["sd1"], "UniPC", steps)[0]) <= 1
    assert max_pixel_diff(ours, _theirs(tiny["sd1"], "UniPC", steps, seed=22)[0]) > 3  # control


@pytest.mark.parametrize("option, value, reference, steps", [
    ("uni_pc_variant", "bh2", {"unipc_variant": "bh2"}, 5),
    ("uni_pc_skip_type", "logSNR", {"unipc_skip_type": "logSNR"}, 5),
    ("uni_pc_skip_type", "time_quadratic", {"unipc_skip_type": "time_quadratic"}, 5),
    ("uni_pc_order", 1, {"unipc_order": 1}, 5),
    ("uni_pc_lower_order_final", False, {"unipc_lower_order_final": False}, 4),
])
def test_each_unipc_option_equals_a1111(service, tiny, option, value, reference, steps):
    """Each option against the reference driven the same way (its own grid, order, variant), with a negative
    control: the default settings' image is told apart by the same tolerance."""
    settings = request_fields({option: value})["unipc"]
    ours = _ours(service, "UniPC", steps, unipc=settings).images[0]
    assert max_pixel_diff(ours, _theirs(tiny["sd1"], "UniPC", steps, **reference)[0]) <= 1
    assert max_pixel_diff(ours, _ours(service, "UniPC", steps).images[0]) > 1


def test_unipc_vary_coeff_is_refused_not_ignored(service):
    with pytest.raises(InvalidRequest, match="uni_pc_variant"):
        _ours(service, "UniPC", unipc=UniPCSettings(variant="vary_coeff"))
