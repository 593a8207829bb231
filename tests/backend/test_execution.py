"""The execution context's guarded VAE path, in half precision on the CPU (`--precision fp16`): a checkpoint whose
VAE overflows in fp16 (as SD 1.x and SDXL VAEs do on real pictures) gives, in every mode, the picture of the
same model with an fp32 VAE (`--no-half-vae`); A1111's automatic switch to fp32 happens once and sticks. With the
switch off it is a clear error; a UNet that overflows is a clear error naming --no-half."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from backend.errors import PrecisionError
from backend.generation.requests import GenerationRequest
from tests.conftest import build_backend
from tests.fixtures import tiny_models

# Large enough that the first convolution's output passes fp16's 65504; in fp32 the GroupNorms that follow
# bring it back to an ordinary picture.
OVERFLOW = 1e5


def _write_overflowing(tiny, folder: Path, name: str, prefixes: tuple[str, ...]) -> None:
    path = folder / "Stable-diffusion" / name
    tiny_models.write_checkpoint(tiny["sd1"], path)
    tensors = load_file(path)
    for key in tensors:
        if key.startswith(prefixes) and key.endswith(".weight"):
            tensors[key] = tensors[key] * OVERFLOW
    save_file(tensors, path)


@pytest.fixture(scope="module")
def overflow_models(tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("overflow-models")
    _write_overflowing(tiny, root, "vae-overflow.safetensors",
                       ("first_stage_model.decoder.conv_in", "first_stage_model.encoder.conv_in"))
    _write_overflowing(tiny, root, "unet-overflow.safetensors", ("model.diffusion_model.input_blocks.0.0",))
    return root


@pytest.fixture(scope="module")
def half(overflow_models, tmp_path_factory):
    svc = build_backend(overflow_models, tmp_path_factory.mktemp("half-out"), precision="fp16")
    yield svc
    svc.shutdown()


@pytest.fixture(scope="module")
def fp32_vae(overflow_models, tmp_path_factory):
    svc = build_backend(overflow_models, tmp_path_factory.mktemp("fp32-vae-out"), precision="fp16", no_half_vae=True)
    yield svc
    svc.shutdown()


def _picture() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


BASE = dict(prompt="a lighthouse", negative_prompt="fog", steps=2, width=64, height=64, seed=8, sampler_name="Euler",
            checkpoint="vae-overflow.safetensors", save_images=False)
CASES = {
    "txt2img": {},
    "batch": dict(batch_size=2),
    "hires Latent": dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.6),
    "hires Lanczos": dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", denoising_strength=0.6),
    "img2img": dict(init_image=_picture(), denoising_strength=0.6),
    "inpaint": dict(init_image=_picture(), mask=_mask(), denoising_strength=0.6),
}


def test_every_mode_gives_the_fp32_vae_picture_and_the_switch_happens_once(half, fp32_vae, caplog):
    context = half.runner.context
    assert context.vae_dtype == torch.float16 and context.vae_upcasts == 0
    with caplog.at_level(logging.WARNING, logger="backend.execution"):
        for name, fields in CASES.items():
            req = GenerationRequest(**{**BASE, **fields})
            ours, want = half.generate(req), fp32_vae.generate(req)
            assert len(ours.images) == len(want.images), name
            for got, expected in zip(ours.images, want.images, strict=True):
                got, expected = np.asarray(got, dtype=np.int16), np.asarray(expected, dtype=np.int16)
                assert got.std() > 5, name  # a picture, not a black one
                # up to the VAE's weights having been rounded to fp16 at load, as in A1111 (it casts them back)
                diff = np.abs(got - expected)
                assert diff.max() <= 4 and diff.mean() < 0.5, (name, diff.max(), diff.mean())
    assert context.vae_upcasts == 1
    assert sum("runs in fp32 from now on" in r.getMessage() for r in caplog.records) == 1
    assert half.models.loaded_model.vae.dtype == torch.float32  # it sticks
    assert half.models.loaded_model.unet.dtype == torch.float16  # only the VAE


def test_the_vae_really_overflows_in_fp16(fp32_vae):
    """The fixture's premise: without the guard, fp16 decoding of these weights is not finite."""
    fp32_vae.generate(GenerationRequest(**BASE))
    vae = fp32_vae.models.loaded_model.vae
    latents = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    try:
        vae.to(torch.float16)
        with torch.no_grad():
            assert not torch.isfinite(vae.decode(latents.half()).sample).all()
    finally:
        vae.to(torch.float32)


def test_with_auto_vae_precision_off_the_overflow_is_an_error(overflow_models, tmp_path):
    svc = build_backend(overflow_models, tmp_path, precision="fp16")
    try:
        svc.set_options({"auto_vae_precision": False})
        with pytest.raises(PrecisionError, match="auto_vae_precision"):
            svc.generate(GenerationRequest(**BASE))
        assert svc.runner.context.vae_upcasts == 0
    finally:
        svc.shutdown()


def test_disable_nan_check_keeps_the_overflowed_picture(overflow_models, tmp_path):
    """A1111's --disable-nan-check: no check, no retry (what the user asked for)."""
    svc = build_backend(overflow_models, tmp_path, precision="fp16", nan_check=False)
    try:
        image = svc.generate(GenerationRequest(**BASE)).images[0]
        assert np.asarray(image).std() == 0
        assert svc.runner.context.vae_upcasts == 0
    finally:
        svc.shutdown()


def test_a_unet_that_overflows_is_an_error_naming_no_half(half):
    with pytest.raises(PrecisionError, match="--no-half"):
        half.generate(GenerationRequest(**{**BASE, "checkpoint": "unet-overflow.safetensors"}))
    with pytest.raises(PrecisionError, match="--no-half"):  # checked before a hires decode could blame the VAE
        half.generate(GenerationRequest(**{**BASE, **CASES["hires Lanczos"], "checkpoint": "unet-overflow.safetensors"}))


def test_upcast_sampling_runs_the_half_unet_under_autocast(models_dir, tmp_path, service):
    """A1111's --upcast-sampling: fp16 weights, the UNet's calls under autocast; the fp32 picture."""
    svc = build_backend(models_dir, tmp_path, precision="fp16", upcast_sampling=True)
    try:
        req = GenerationRequest(prompt="a lighthouse", steps=3, width=64, height=64, seed=8, sampler_name="Euler",
                                checkpoint="sd1.safetensors", save_images=False)
        svc.generate(req)
        unet = svc.models.loaded_model.unet
        seen = []
        handle = unet.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
        try:
            ours = np.asarray(svc.generate(req).images[0], dtype=np.int16)
        finally:
            handle.remove()
        assert seen and all(seen) and unet.dtype == torch.float16
        want = np.asarray(service.generate(req).images[0], dtype=np.int16)
        assert np.abs(ours - want).mean() < 2
    finally:
        svc.shutdown()
