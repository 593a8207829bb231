"""A checkpoint's own noise schedule (`alphas_cumprod`), used as A1111's LDM model uses it: loaded with the
weights for SD 1.x/2.x, ignored for SDXL and when it is not a schedule."""

import pytest
import torch
from safetensors.torch import save_file

from backend.generation.requests import GenerationRequest
from backend.generation.sigmas import default_alphas_cumprod
from tests.conftest import build_backend
from tests.fixtures import tiny_models
from tests.fixtures.a1111_reference import a1111_txt2img
from tests.fixtures.reference import max_pixel_diff, reference_conds

# DDPM's linear schedule (betas 1e-4 .. 0.02): a fine-tune trained on it carries it in its file
LINEAR = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()


@pytest.fixture(scope="module")
def schedules(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("schedules")
    folder = root / "Stable-diffusion"
    folder.mkdir()
    for name, model, values in (("own.safetensors", tiny["sd1"], LINEAR),
                                ("odd.safetensors", tiny["sd1"], torch.linspace(0.1, 0.9, 1000)),  # rising
                                ("xl.safetensors", tiny["sdxl"], LINEAR)):
        state = tiny_models.ldm_state_dict(model)
        state["alphas_cumprod"] = values
        save_file(state, str(folder / name))
    service = build_backend(root, root / "outputs")
    yield service
    service.shutdown()


def _ours(service, checkpoint, sampler="Euler"):
    return service.generate(GenerationRequest(prompt="a lighthouse at dusk", negative_prompt="fog", steps=8,
                                              width=64, height=64, seed=21, sampler_name=sampler,
                                              checkpoint=checkpoint, save_images=False))


def _theirs(model, sampler, alphas_cumprod=None, sdxl=False):
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    return a1111_txt2img(model.unet, model.vae, cond, uncond, sampler, None, 8, 7.0, [21], 64, 64, sdxl=sdxl,
                         alphas_cumprod=alphas_cumprod)[0]


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_a_checkpoints_own_schedule_is_sampled_on(schedules, tiny, sampler):
    ours = _ours(schedules, "own.safetensors", sampler)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, LINEAR)) <= 3
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler)) > 3  # negative control: SD's schedule


def test_sdxl_and_values_that_are_no_schedule_keep_the_default(schedules, tiny):
    odd = schedules.models.get(schedules.registry.find_checkpoint("odd.safetensors"))
    assert odd.alphas_cumprod is None  # rising values: not a schedule, so SD's default is sampled on
    own = schedules.models.get(schedules.registry.find_checkpoint("own.safetensors"))
    assert torch.equal(own.alphas_cumprod, LINEAR) and not torch.equal(LINEAR, default_alphas_cumprod())
    xl = _ours(schedules, "xl.safetensors")
    assert max_pixel_diff(xl.images[0], _theirs(tiny["sdxl"], "Euler", sdxl=True)) <= 3
    assert max_pixel_diff(xl.images[0], _theirs(tiny["sdxl"], "Euler", LINEAR, sdxl=True)) > 3  # control
