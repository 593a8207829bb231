"""Hires fix against A1111's rules: latent and image upscalers, the second pass's schedule and noise, the
resize box crop, infotext, and refusals."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from tests.fixtures.a1111_reference import a1111_latents, a1111_timestep_latents, decode_truncated
from tests.fixtures.reference import max_pixel_diff, reference_conds


def _req(**kw):
    base = dict(prompt="a castle", negative_prompt="blur", steps=4, width=64, height=64, seed=77,
                sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False, enable_hr=True,
                denoising_strength=0.6)
    return GenerationRequest(**{**base, **kw})



def _a1111_hires(model, upscale, hr_steps=4, seed=77, sampler="Euler"):
    cond, uncond = reference_conds(model, "a castle", "blur")
    first = a1111_latents(model.unet, cond, uncond, sampler, None, 4, 7.0, [seed], 64, 64)
    init = upscale(first)
    second = a1111_latents(model.unet, cond, uncond, sampler, None, hr_steps, 7.0, [seed], 128, 128,
                           init=init, denoising_strength=0.6)
    return decode_truncated(model.vae, second)[0]


@pytest.mark.parametrize("sampler", ["Euler", "DPM fast", "DPM adaptive"])
def test_latent_hires_equals_a1111(service, tiny, sampler):
    """DPM fast/adaptive take the second pass's own sigma interval, as A1111's sample_img2img passes it."""
    ours = service.generate(_req(hr_upscaler="Latent", sampler_name=sampler))
    expected = _a1111_hires(tiny["sd1"], lambda x: F.interpolate(x, size=(16, 16), mode="bilinear", antialias=False),
                            sampler=sampler)
    assert ours.images[0].size == (128, 128) and max_pixel_diff(ours.images[0], expected) <= 3
    nearest = _a1111_hires(tiny["sd1"], lambda x: F.interpolate(x, size=(16, 16), mode="nearest"), sampler=sampler)
    assert max_pixel_diff(ours.images[0], nearest) > 3  # negative control: another latent upscale
    text = ours.infotexts[0]
    assert "Size: 64x64," in text
    assert "Denoising strength: 0.6, " in text and text.index("Hires upscale: 2.0") < text.index("Hires upscaler: Latent")


def test_lanczos_hires_equals_a1111(service, tiny):
    model = tiny["sd1"]

    def through_pixels(latents):
        first = decode_truncated(model.vae, latents)[0].resize((128, 128), Image.LANCZOS)
        pixels = torch.from_numpy(np.asarray(first, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            dist = model.vae.encode(pixels).latent_dist
        noise = torch.randn((4, 16, 16), generator=torch.Generator().manual_seed(77))[None]
        return (dist.mean + dist.std * noise) * model.vae.config.scaling_factor

    ours = service.generate(_req(hr_upscaler="Lanczos", hr_second_pass_steps=3))
    assert max_pixel_diff(ours.images[0], _a1111_hires(model, through_pixels, hr_steps=3)) <= 3
    assert max_pixel_diff(ours.images[0], _a1111_hires(model, through_pixels, hr_steps=4)) > 3  # negative control
    assert "Hires steps: 3, Hires upscaler: Lanczos" in ours.infotexts[0]


def test_resize_box_crops_the_latents_and_keeps_the_first_pass_size(service):
    result = service.generate(_req(hr_resize_x=96, hr_resize_y=128, width=64, height=80))
    # 64x80 covering 96x128: upscaled to 102x128 (128 * 64 // 80), i.e. 12x16 latents, none cropped here
    assert result.images[0].size == (96, 128)
    assert "Size: 64x80," in result.infotexts[0] and "Hires resize: 96x128" in result.infotexts[0]
    cropped = service.generate(_req(hr_resize_x=128, hr_resize_y=96))  # 128x128 latents, 4 rows cropped
    assert cropped.images[0].size == (128, 96)


def test_unknown_upscaler_and_oversize_are_refused(service):
    with pytest.raises(InvalidRequest, match="hr_upscaler: unknown upscaler 'ESRGAN_4x'"):
        service.submit(_req(hr_upscaler="ESRGAN_4x"))
    with pytest.raises(InvalidRequest, match="hr_scale"):
        service.submit(_req(width=1024, height=1024, hr_scale=4.0))


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC"])
def test_timestep_sampler_hires_equals_a1111(service, tiny, sampler):
    """A1111's img2img for DDIM/PLMS/UniPC: noised to timestep t_enc, the loop starting one timestep lower."""
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, "a castle", "blur")
    first = a1111_timestep_latents(model.unet, cond, uncond, sampler, 4, 12.0, [77], 64, 64)
    init = F.interpolate(first, size=(16, 16), mode="bilinear", antialias=False)
    second = a1111_timestep_latents(model.unet, cond, uncond, sampler, 4, 12.0, [77], 128, 128, init=init,
                                    denoising_strength=0.6)
    ours = service.generate(_req(hr_upscaler="Latent", sampler_name=sampler, cfg_scale=12.0))
    assert max_pixel_diff(ours.images[0], decode_truncated(model.vae, second)[0]) <= 1
    one_off = a1111_timestep_latents(model.unet, cond, uncond, sampler, 5, 12.0, [77], 128, 128, init=init,
                                     denoising_strength=0.6)
    assert max_pixel_diff(ours.images[0], decode_truncated(model.vae, one_off)[0]) > 1  # control: K = 5, not 4


def test_hires_checkpoint_runs_the_second_pass_on_another_model_as_a1111(service, tiny):
    """A1111 switches models after the first pass: the hires checkpoint's text encoder, UNet and VAE make the
    second pass (here SD 2-v after SD 1); the infotext names it as A1111's short title."""
    ours = service.generate(_req(hr_upscaler="Latent", hr_checkpoint="sd2-v"))
    sd1, sd2 = tiny["sd1"], tiny["sd2"]
    cond, uncond = reference_conds(sd1, "a castle", "blur")
    first = a1111_latents(sd1.unet, cond, uncond, "Euler", None, 4, 7.0, [77], 64, 64)
    init = F.interpolate(first, size=(16, 16), mode="bilinear", antialias=False)
    cond, uncond = reference_conds(sd2, "a castle", "blur")
    second = a1111_latents(sd2.unet, cond, uncond, "Euler", None, 4, 7.0, [77], 128, 128, v_prediction=True,
                           init=init, denoising_strength=0.6)
    assert max_pixel_diff(ours.images[0], decode_truncated(sd2.vae, second)[0]) <= 3
    assert max_pixel_diff(ours.images[0], decode_truncated(sd1.vae, second)[0]) > 3  # control: the first's VAE
    title = service.registry.find_checkpoint("sd2-v.safetensors")
    assert f"Hires checkpoint: {title.model_name} [{title.short_hash}]" in ours.infotexts[0]
    again = service.generate(_req(hr_upscaler="Latent"))  # the next request is back on its own model
    assert max_pixel_diff(again.images[0], _a1111_hires(sd1, lambda x: F.interpolate(
        x, size=(16, 16), mode="bilinear", antialias=False))) <= 3


def test_hires_checkpoint_with_batches_and_an_image_upscaler(service):
    result = service.generate(_req(hr_upscaler="Lanczos", hr_checkpoint="sd1-pickle.ckpt", n_iter=2))
    same = service.generate(_req(hr_upscaler="Lanczos", n_iter=2))  # the same weights in another file
    assert all(max_pixel_diff(a, b) == 0 for a, b in zip(result.images, same.images, strict=True))


def test_unknown_hires_checkpoint_is_refused(service):
    with pytest.raises(InvalidRequest, match="hr_checkpoint_name"):
        service.submit(_req(hr_checkpoint="nope"))


def test_hires_sampler_prompts_and_schedule_in_a1111s_order(service):
    text = service.generate(_req(hr_upscaler="Latent", sampler_name="Euler", hr_sampler_name="DPM++ 2M",
                                 hr_prompt="a castle, sharp", hr_negative_prompt="blur, noise")).infotexts[0]
    assert ('RNG: CPU, Hires sampler: DPM++ 2M, Hires prompt: "a castle, sharp", '
            'Hires negative prompt: "blur, noise", Hires schedule type: Karras, Hires upscale: 2.0, '
            'Hires upscaler: Latent') in text
    assert "Schedule type: Automatic," in text  # Euler has no schedule of its own: A1111 writes the choice
    same = service.generate(_req(hr_upscaler="Latent", sampler_name="DPM++ 2M", hr_sampler_name="Euler",
                                 hr_scheduler="Karras")).infotexts[0]
    assert "Schedule type: Karras," in same and "Hires schedule type" not in same  # the same as the first's
    assert "Hires sampler: Euler" in same


def test_hires_sampler_runs_the_second_pass_as_a1111(service, tiny):
    kw = dict(hr_upscaler="Latent", denoising_strength=0.9, cfg_scale=12.0)
    ours = service.generate(_req(hr_sampler_name="DPM++ 2M SDE", **kw)).images[0]
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, "a castle", "blur")
    first = a1111_latents(model.unet, cond, uncond, "Euler", None, 4, 12.0, [77], 64, 64)
    init = F.interpolate(first, size=(16, 16), mode="bilinear", antialias=False)
    second = a1111_latents(model.unet, cond, uncond, "DPM++ 2M SDE", None, 4, 12.0, [77], 128, 128, init=init,
                           denoising_strength=0.9)
    assert max_pixel_diff(ours, decode_truncated(model.vae, second)[0]) <= 3
    assert max_pixel_diff(ours, service.generate(_req(**kw)).images[0]) > 3  # Euler there: another image


# ------------------------------------------------------------------ A1111 1.10's firstpass_image

def _picture(seed=9):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _a1111_firstpass_roundtrip(picture):
    """What A1111's txt2img does to a given first-pass picture before the second pass: numpy float32 to -1..1,
    a torch tensor back to 0..1, then 255. * values truncated to 8 bits."""
    levels = np.moveaxis(np.array(picture).astype(np.float32) / 255.0 * 2.0 - 1.0, 2, 0)
    lowres = torch.clamp((torch.asarray(levels) + 1.0) / 2.0, min=0.0, max=1.0)
    return Image.fromarray((255.0 * np.moveaxis(lowres.numpy(), 0, 2)).astype(np.uint8))


def _encoded_like_a1111(model, image, seed=77):
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        dist = model.vae.encode(pixels).latent_dist
    noise = torch.randn(tuple(dist.mean.shape[1:]), generator=torch.Generator().manual_seed(seed))[None]
    return (dist.mean + dist.std * noise) * model.vae.config.scaling_factor


def test_firstpass_image_with_an_image_upscaler_equals_a1111(service, tiny):
    model, picture = tiny["sd1"], _picture()
    ours = service.generate(_req(hr_upscaler="Lanczos", firstpass_image=picture))
    expected = _a1111_hires(model, lambda _: _encoded_like_a1111(
        model, _a1111_firstpass_roundtrip(picture).resize((128, 128), Image.LANCZOS)))
    assert ours.images[0].size == (128, 128) and max_pixel_diff(ours.images[0], expected) <= 3
    assert max_pixel_diff(ours.images[0], service.generate(_req(hr_upscaler="Lanczos")).images[0]) > 3  # control


def test_firstpass_image_with_a_latent_upscaler_equals_a1111(service, tiny):
    model, picture = tiny["sd1"], _picture(4)
    ours = service.generate(_req(hr_upscaler="Latent", firstpass_image=picture))
    expected = _a1111_hires(model, lambda _: F.interpolate(_encoded_like_a1111(model, picture), size=(16, 16),
                                                           mode="bilinear", antialias=False))
    assert max_pixel_diff(ours.images[0], expected) <= 3
    unsampled = _a1111_hires(model, lambda _: F.interpolate(_encoded_like_a1111(model, picture, seed=78),
                                                            size=(16, 16), mode="bilinear", antialias=False))
    assert max_pixel_diff(ours.images[0], unsampled) > 3  # negative control: another seed's encoding noise


def test_firstpass_roundtrip_truncates_as_a1111():
    every_level = Image.fromarray(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3))
    from backend.generation.txt2img import _as_first_pass

    ours = _as_first_pass(GenerationRequest(prompt="", firstpass_image=every_level, enable_hr=True), [1])[0]
    assert np.array_equal(np.asarray(ours), np.asarray(_a1111_firstpass_roundtrip(every_level)))


def test_firstpass_image_without_hires_is_refused(service):
    with pytest.raises(InvalidRequest, match="firstpass_image"):
        service.generate(_req(enable_hr=False, firstpass_image=_picture()))


# ------------------------------------------------------------------ inpainting checkpoints

@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_with_an_inpainting_checkpoint_conditions_on_a_blank_at_the_final_size(service, upscaler):
    """As A1111's image-upscaler path: the second pass sees the masked-out blank (a fully masked picture) at
    the final size; the latent path does the same (A1111 builds it at the first pass's size, which fails)."""
    model = service.models.get(service.registry.find_checkpoint("sd1-inpainting.safetensors"))
    seen = []
    handle = model.unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    try:
        result = service.generate(_req(checkpoint="sd1-inpainting.safetensors", hr_upscaler=upscaler))
    finally:
        handle.remove()
    assert result.images[0].size == (128, 128) and np.asarray(result.images[0]).std() > 5
    assert seen[0][1:] == (9, 8, 8) and seen[-1][1:] == (9, 16, 16)


def test_hires_on_an_inpainting_checkpoint_shows_the_upscaled_picture_below_full_mask_weight(service):
    """A1111's image-upscaler path conditions the second pass on the upscaled picture lerped towards blank by
    inpainting_mask_weight: at 1 the blank (zero) picture, at 0.5 half the picture; the mask channel is all
    ones either way. The latent path has no picture and stays blank."""
    model = service.models.get(service.registry.find_checkpoint("sd1-inpainting.safetensors"))

    def second_pass_channels(**kw):
        seen = []
        handle = model.unet.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 4:]))
        try:
            service.generate(_req(checkpoint="sd1-inpainting.safetensors", **kw))
        finally:
            handle.remove()
        return seen[-1]

    blank = second_pass_channels(hr_upscaler="Lanczos")
    half = second_pass_channels(hr_upscaler="Lanczos", inpainting_mask_weight=0.5)
    assert torch.equal(blank[:, 0], torch.ones_like(blank[:, 0])) and torch.equal(half[:, 0], blank[:, 0])
    assert (half[:, 1:] - blank[:, 1:]).abs().max() > 0.05  # the picture shows through
    latent = second_pass_channels(hr_upscaler="Latent", inpainting_mask_weight=0.5)
    assert torch.equal(latent, blank)
