"""The request options this round added, in half precision on the CPU (`--precision fp16`): the path our users'
GPUs take. NGMS, padded conditionings, the noise multiplier, soft and latent-noise masks and the block-level
interrupt hooks make the fp32 images, up to fp16 rounding."""

import numpy as np
import pytest
from PIL import Image

from backend.control.units import ControlUnit
from backend.generation.requests import GenerationRequest, MaskedContent
from tests.conftest import build_backend


@pytest.fixture(scope="module")
def half(models_dir, tmp_path_factory):
    svc = build_backend(models_dir, tmp_path_factory.mktemp("half"), precision="fp16")
    yield svc
    svc.shutdown()


def _picture():
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _mask():
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


CASES = {
    "ngms": dict(s_min_uncond=10.0),
    "pad conds": dict(prompt="a lighthouse at dusk, " * 20, pad_conds="pad"),
    "pad conds v0": dict(prompt="a lighthouse at dusk, " * 20, pad_conds="v0"),
    "separate cond/uncond": dict(batch_cond_uncond=False),
    "img2img noise multiplier": dict(init_image=_picture(), denoising_strength=0.6, initial_noise_multiplier=0.7),
    "soft latent-noise mask": dict(init_image=_picture(), mask=_mask(), mask_blur=8, denoising_strength=0.6,
                                   mask_round=False, inpainting_fill=MaskedContent.LATENT_NOISE),
    "controlnet canny": dict(control_units=(ControlUnit(model="control_sd15_tiny", module="canny", image=_picture(),
                                                        processor_res=64, threshold_a=100, threshold_b=200,
                                                        control_mode="My prompt is more important"),)),
    "controlnet tile_colorfix": dict(control_units=(ControlUnit(model="diffusers_sd15_tiny", module="tile_colorfix",
                                                                image=_picture(), threshold_a=8, weight=0.7),)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp16_makes_the_fp32_image(service, half, case):
    fields = dict(prompt="a lighthouse", negative_prompt="fog", steps=4, width=64, height=64, seed=21,
                  sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False, cfg_scale=12.0)
    req = GenerationRequest(**{**fields, **CASES[case]})
    ours = half.generate(req)
    assert half.models.loaded_model.unet.dtype.itemsize == 2  # really in half precision
    fp32 = service.generate(req)
    got, want = (np.asarray(r.images[0], dtype=np.int16) for r in (ours, fp32))
    assert got.std() > 5  # a picture, not a black or NaN one
    assert np.abs(got - want).mean() < 3
