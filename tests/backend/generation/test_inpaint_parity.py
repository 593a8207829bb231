"""Inpainting at denoising 0.5 equals A1111's, for its own timestep samplers (the clean picture put back into
every model input) and for k-diffusion's (blended into every denoised estimate): the references are in
tests/fixtures/a1111_reference.py."""

import numpy as np
import pytest
import torch
from PIL import Image

from backend.generation.requests import GenerationRequest, MaskedContent
from tests.fixtures.a1111_reference import OPTIONS, a1111_latents, a1111_timestep_latents, decode_truncated
from tests.fixtures.reference import max_pixel_diff, reference_conds


def _ours(service, sampler, **kw):
    kw = {"width": 64, "height": 64, **kw}
    req = GenerationRequest(prompt="a lighthouse at dusk", negative_prompt="fog", steps=8, seed=21,
                            sampler_name=sampler, checkpoint="sd1.safetensors", save_images=False, cfg_scale=12.0,
                            **kw)
    return service.generate(req)


def _a1111_inpainted(model, sampler: str, init: torch.Tensor, picture: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's inpainting ("original" content, no blur) at denoising 0.5 from `init` latents: the clean picture
    kept outside the latent mask, and pasted back over the decoded result."""
    repaint = np.around(np.asarray(mask.resize((8, 8), Image.BICUBIC), dtype=np.float32) / 255)
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    keep = 1 - torch.from_numpy(repaint)[None, None]
    if sampler in OPTIONS:  # k-diffusion's samplers blend the picture into each denoised estimate instead
        latents = a1111_latents(model.unet, cond, uncond, sampler, None, 8, 12.0, [21], 64, 64, init=init,
                                denoising_strength=0.5, img2img=True, keep=keep)
    else:
        latents = a1111_timestep_latents(model.unet, cond, uncond, sampler, 8, 12.0, [21], 64, 64, init=init,
                                         denoising_strength=0.5, img2img=True, keep=keep)
    return Image.composite(decode_truncated(model.vae, latents)[0], picture, mask)


def _picture():
    rng = np.random.default_rng(3)
    base = np.zeros((64, 64, 3), dtype=np.uint8)
    base[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    base[..., 2] = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    return Image.fromarray(base)


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC", "Euler", "DPM++ 2M SDE", "LCM"])
def test_inpaint_at_half_strength_equals_a1111(service, tiny, sampler):
    """A1111's inpainting ("original" content, no blur) at denoising 0.5: t_enc = 4 of 8 steps, the clean
    picture put back into every model input outside the mask, and pasted back over the decoded result."""
    picture, mask = _picture(), Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 8, 48, 40))
    ours = _ours(service, sampler, init_image=picture, mask=mask, mask_blur=0, denoising_strength=0.5,
                 inpainting_fill=MaskedContent.ORIGINAL)
    model = tiny["sd1"]
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        init = model.vae.encode(pixels).latent_dist.mode() * model.vae.config.scaling_factor
    theirs = _a1111_inpainted(model, sampler, init, picture, mask)
    assert max_pixel_diff(ours.images[0], theirs) <= 1
    assert max_pixel_diff(ours.images[0], picture) > 3  # the masked area really was repainted


@pytest.mark.parametrize("sampler", ["DDIM", "Euler"])
def test_reference_sampling_the_vae_posterior_as_a1111_gives_our_picture(tmp_path, sampler):
    """A1111 encodes the init picture with a *sample* of the VAE's posterior (LDM's get_first_stage_encoding, on
    the unseeded global RNG); we take its mean, deterministic. With a real VAE's spread (log-variance near -20:
    a standard deviation of about 5e-5) the two are the same picture, which this reference shows by sampling
    the posterior exactly as A1111 does. (The tiny test VAE's spread is large, so the other tests compare with
    the mean.)"""
    from tests.conftest import build_backend
    from tests.fixtures import tiny_models

    model = tiny_models.make_sd1(seed=1)
    latent = model.vae.config.latent_channels
    with torch.no_grad():  # a real VAE's confidence: the log-variance half of the moments is about -20
        model.vae.quant_conv.weight[latent:] = 0
        model.vae.quant_conv.bias[latent:] = -20.0
    tiny_models.write_checkpoint(model, tmp_path / "models" / "Stable-diffusion" / "sd1.safetensors")
    service = build_backend(tmp_path / "models", tmp_path / "outputs")
    try:
        picture, mask = _picture(), Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 8, 48, 40))
        ours = _ours(service, sampler, init_image=picture, mask=mask, mask_blur=0, denoising_strength=0.5,
                     inpainting_fill=MaskedContent.ORIGINAL)
    finally:
        service.shutdown()
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        posterior = model.vae.encode(pixels).latent_dist
        init = posterior.sample() * model.vae.config.scaling_factor  # global RNG, as A1111
    assert float(posterior.std.max()) < 1e-4
    theirs = _a1111_inpainted(model, sampler, init, picture, mask)
    assert max_pixel_diff(ours.images[0], theirs) <= 1
    assert max_pixel_diff(ours.images[0], picture) > 3


def _a1111_blurred_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """processing.py's StableDiffusionProcessingImg2Img.init: OpenCV's Gaussian along rows, then columns, on
    8-bit pictures."""
    import cv2

    array = cv2.GaussianBlur(np.array(mask), (2 * int(2.5 * blur_x + 0.5) + 1, 1), blur_x)
    return Image.fromarray(cv2.GaussianBlur(array, (1, 2 * int(2.5 * blur_y + 0.5) + 1), blur_y))


def _a1111_overlay(generated: Image.Image, picture: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's apply_overlay: the picture, premultiplied ("RGBa") where the mask is black, alpha-composited over
    the generated one."""
    from PIL import ImageOps

    overlay = Image.new("RGBa", picture.size)
    overlay.paste(picture.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
    result = generated.convert("RGBA")
    result.alpha_composite(overlay.convert("RGBA"))
    return result.convert("RGB")


@pytest.mark.parametrize("blurs", [(4, 4), (2, 6)])
def test_blurred_mask_inpainting_equals_a1111(service, tiny, blurs):
    """Mask blur as A1111: OpenCV's blur rounded to 8 bits after each direction, the blurred mask resized to
    the latents (rounded: `mask_round`), and doubled for the overlay's alpha (A1111's mask_for_overlay when
    the whole picture is inpainted)."""
    picture, mask = _picture(), Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 8, 48, 40))
    ours = _ours(service, "Euler", init_image=picture, mask=mask, mask_blur_x=blurs[0], mask_blur_y=blurs[1],
                 denoising_strength=0.5, inpainting_fill=MaskedContent.ORIGINAL)
    model = tiny["sd1"]
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        init = model.vae.encode(pixels).latent_dist.mode() * model.vae.config.scaling_factor
    blurred = _a1111_blurred_mask(mask, *blurs)
    repaint = np.around(np.asarray(blurred.resize((8, 8), Image.BICUBIC), dtype=np.float32) / 255)
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 8, 12.0, [21], 64, 64, init=init,
                            denoising_strength=0.5, img2img=True, keep=1 - torch.from_numpy(repaint)[None, None])
    generated = decode_truncated(model.vae, latents)[0]
    for_overlay = Image.fromarray(np.clip(np.asarray(blurred).astype(np.float32) * 2, 0, 255).astype(np.uint8))
    assert max_pixel_diff(ours.images[0], _a1111_overlay(generated, picture, for_overlay)) <= 1
    # negative controls: the blurred mask not doubled, or a float blur rounded once, give other pictures
    assert max_pixel_diff(ours.images[0], _a1111_overlay(generated, picture, blurred)) > 3
    assert max_pixel_diff(ours.images[0], _a1111_overlay(generated, picture, _float_blur(mask, *blurs))) > 1


def _float_blur(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """The same Gaussian in floating point, rounded once at the end (not what A1111 does)."""
    from scipy.ndimage import correlate1d

    array = np.asarray(mask, dtype=np.float64)
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        radius = int(2.5 * sigma + 0.5)
        taps = np.exp(-((np.arange(-radius, radius + 1) / sigma) ** 2) / 2)
        array = correlate1d(array, taps / taps.sum(), axis=axis, mode="mirror")
    doubled = np.clip(np.rint(array) * 2, 0, 255)
    return Image.fromarray(doubled.astype(np.uint8))


def test_only_masked_with_another_aspect_ratio_equals_a1111(service, tiny):
    """"Only masked" at 64x96 on a 64x64 picture, numbers worked out from A1111's masking.py and images.py:
    the mask's box (16, 8, 41, 40) padded by 4 is 33x40, grown to 2:3 by int(49.5 - 40) = 9 rows: region
    (12, 0, 45, 49). Resize-and-fill: 64 x (49 * 64 // 33 = 95) pasted at row 1, row 0 stretched from the
    top edge. The result is pasted back crop-and-resized to 33x49 and overlaid with the unblurred mask."""
    picture, mask = _picture(), Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 8, 41, 40))
    ours = _ours(service, "Euler", init_image=picture, mask=mask, mask_blur=0, denoising_strength=0.5,
                 inpainting_fill=MaskedContent.ORIGINAL, inpaint_full_res=True, inpaint_full_res_padding=4,
                 width=64, height=96)
    region = (12, 0, 45, 49)

    def fitted(image):  # A1111's resize_image(2, ...) for these sizes
        small = image.convert("RGB").crop(region).resize((64, 95), Image.LANCZOS)
        canvas = Image.new("RGB", (64, 96))
        canvas.paste(small, (0, 1))
        canvas.paste(small.resize((64, 1), Image.BICUBIC, box=(0, 0, 64, 0)), (0, 0))
        return canvas

    model = tiny["sd1"]
    pixels = torch.from_numpy(np.asarray(fitted(picture), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        init = model.vae.encode(pixels).latent_dist.mode() * model.vae.config.scaling_factor
    repaint = np.around(np.asarray(fitted(mask).resize((8, 12), Image.BICUBIC), dtype=np.float32)[..., 0] / 255)
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 8, 12.0, [21], 96, 64, init=init,
                            denoising_strength=0.5, img2img=True, keep=1 - torch.from_numpy(repaint)[None, None])
    generated = decode_truncated(model.vae, latents)[0]
    pasted = picture.copy()
    pasted.paste(generated.resize((33, 49), Image.LANCZOS), region[:2])
    assert max_pixel_diff(ours.images[0], _a1111_overlay(pasted, picture, mask)) <= 1
    # negative control: the region rounded instead of truncated (one row taller, 0..50) is another picture
    taller = picture.copy()
    taller.paste(generated.resize((33, 50), Image.LANCZOS), region[:2])
    assert max_pixel_diff(ours.images[0], _a1111_overlay(taller, picture, mask)) > 3
