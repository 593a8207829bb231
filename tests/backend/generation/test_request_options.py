"""A1111 request options on the one loop, against the k-diffusion reference driven as A1111 drives it: NGMS
(s_min_uncond), the img2img noise multiplier and mask_round (disable_extra_networks: tests/backend/networks)."""

import numpy as np
import pytest
import torch
from PIL import Image

from backend.generation.requests import GenerationRequest, MaskedContent
from tests.fixtures.a1111_reference import a1111_latents, a1111_timestep_latents, a1111_txt2img, decode_truncated
from tests.fixtures.reference import max_pixel_diff, reference_conds

PROMPT, NEGATIVE = "a lighthouse at dusk", "fog"


CFG = 12.0


def _ours(service, sampler="Euler", **kw):
    fields = dict(prompt=PROMPT, negative_prompt=NEGATIVE, steps=8, width=64, height=64, seed=21, cfg_scale=CFG,
                  sampler_name=sampler, checkpoint="sd1.safetensors", save_images=False)
    req = GenerationRequest(**{**fields, **kw})
    return service.generate(req)


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M"])
@pytest.mark.parametrize("every_step", [False, True])
def test_ngms_equals_a1111(service, tiny, sampler, every_step):
    """s_min_uncond 10: below sigma 10, odd model calls (or all) skip the uncond pass."""
    ours = _ours(service, sampler, s_min_uncond=10.0, s_min_uncond_all=every_step)
    cond, uncond = reference_conds(tiny["sd1"], PROMPT, NEGATIVE)
    model = tiny["sd1"]
    theirs = a1111_txt2img(model.unet, model.vae, cond, uncond, sampler, None, 8, CFG, [21], 64, 64,
                           s_min_uncond=10.0, s_min_uncond_all=every_step)[0]
    assert max_pixel_diff(ours.images[0], theirs) <= 3
    assert max_pixel_diff(ours.images[0], _ours(service, sampler).images[0]) > 3  # negative control
    assert "NGMS: 10.0" in ours.infotexts[0] and ("NGMS all steps: True" in ours.infotexts[0]) is every_step


@pytest.mark.parametrize("sampler", ["Euler", "Heun"])
def test_skip_early_cond_equals_a1111(service, tiny, sampler):
    """A1111's skip_early_cond 0.3: model calls whose index / launched calls is at most 0.3 skip the uncond
    (Heun counts two calls a step)."""
    ours = _ours(service, sampler, skip_early_cond=0.3)
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    theirs = a1111_txt2img(model.unet, model.vae, cond, uncond, sampler, None, 8, CFG, [21], 64, 64,
                           skip_early_cond=0.3)[0]
    assert max_pixel_diff(ours.images[0], theirs) <= 1
    assert max_pixel_diff(ours.images[0], _ours(service, sampler).images[0]) > 3  # negative control
    assert "Skip Early CFG: 0.3" in ours.infotexts[0]


def test_always_discard_next_to_last_sigma_equals_a1111(service, tiny):
    """The option gives Euler DPM2's schedule shape (one more step, the next-to-last sigma dropped), and the
    infotext says so; DPM2 discards anyway, so A1111 does not name it there."""
    ours = _ours(service, "Euler", discard_penultimate_sigma=True, steps=3)
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    theirs = a1111_txt2img(model.unet, model.vae, cond, uncond, "Euler", None, 3, CFG, [21], 64, 64,
                           always_discard=True)[0]
    assert max_pixel_diff(ours.images[0], theirs) <= 1
    assert max_pixel_diff(ours.images[0], _ours(service, "Euler", steps=3).images[0]) > 3  # negative control
    assert "Discard penultimate sigma: True" in ours.infotexts[0]
    assert "Discard penultimate sigma" not in _ours(service, "DPM2", discard_penultimate_sigma=True).infotexts[0]


def test_sgm_noise_multiplier_equals_a1111(service, tiny):
    """txt2img's starting noise scaled by (1 + sigma_max^2) ** 0.5 instead of sigma_max (k-diffusion only).
    At sigma_max ~14.6 that is 0.2% more noise: a level on a few hundred values of the tiny model's picture,
    so what is compared is how many values differ."""
    ours = _ours(service, "Euler", sgm_noise_multiplier=True, steps=3)
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    theirs = a1111_txt2img(model.unet, model.vae, cond, uncond, "Euler", None, 3, CFG, [21], 64, 64,
                           sgm_noise_multiplier=True)[0]
    def differing(image):
        return int((np.asarray(image, dtype=int) != np.asarray(theirs, dtype=int)).sum())

    plain = _ours(service, "Euler", steps=3).images[0]
    assert max_pixel_diff(ours.images[0], theirs) <= 1 and differing(ours.images[0]) <= 20  # float sums
    assert differing(plain) >= 200  # negative control: the plain start is a level off on hundreds of values
    assert "SGM noise multiplier: True" in ours.infotexts[0]
    assert "SGM noise multiplier" not in _ours(service, "DDIM", sgm_noise_multiplier=True).infotexts[0]


@pytest.mark.parametrize("schedule", ["Karras", "Exponential", "SGM Uniform"])
def test_schedule_sigma_range_and_rho_equal_a1111(service, tiny, schedule):
    """A1111's sigma_min / sigma_max / rho options reshape the chosen schedule (rho: Karras only), and the
    infotext names them."""
    limits = {"sigma_min": 0.3, "sigma_max": 6.0, "rho": 3.0}
    ours = _ours(service, "Euler", scheduler=schedule, schedule_sigma_min=0.3, schedule_sigma_max=6.0,
                 schedule_rho=3.0)
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    theirs = a1111_txt2img(model.unet, model.vae, cond, uncond, "Euler", schedule, 8, CFG, [21], 64, 64,
                           schedule_limits=limits)[0]
    assert max_pixel_diff(ours.images[0], theirs) <= 1
    assert max_pixel_diff(ours.images[0], _ours(service, "Euler", scheduler=schedule).images[0]) > 3  # control
    assert "Schedule min sigma: 0.3, Schedule max sigma: 6.0" in ours.infotexts[0]
    assert ("Schedule rho: 3.0" in ours.infotexts[0]) is (schedule == "Karras")


def test_schedule_limits_are_not_named_where_no_schedule_function_runs(service):
    """Euler on "Automatic" uses the model's own sigmas in A1111, untouched by the options, and names none."""
    plain = _ours(service, "Euler")
    ours = _ours(service, "Euler", schedule_sigma_min=0.3, schedule_sigma_max=6.0, schedule_rho=3.0)
    assert max_pixel_diff(ours.images[0], plain.images[0]) == 0
    assert "Schedule min sigma" not in ours.infotexts[0] and "Schedule rho" not in ours.infotexts[0]


def test_ngms_on_every_step_above_the_largest_sigma_is_guidance_off(service):
    """An independent check: skipping every uncond pass leaves the conditional prediction alone, as cfg 1."""
    skipped = _ours(service, s_min_uncond=1000.0, s_min_uncond_all=True)
    assert max_pixel_diff(skipped.images[0], _ours(service, cfg_scale=1.0).images[0]) <= 1
    assert max_pixel_diff(skipped.images[0], _ours(service).images[0]) > 3  # control: guidance is on otherwise
    below = _ours(service, s_min_uncond=0.001)  # under every sigma of the schedule: nothing is skipped
    assert max_pixel_diff(below.images[0], _ours(service).images[0]) == 0


def _picture():
    rng = np.random.default_rng(5)
    base = np.zeros((64, 64, 3), dtype=np.uint8)
    base[..., 1] = np.linspace(0, 255, 64, dtype=np.uint8)[:, None]
    base[..., 2] = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    return Image.fromarray(base)


def _init_latents(model, picture):
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model.vae.encode(pixels).latent_dist.mode() * model.vae.config.scaling_factor


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DDIM"])
def test_img2img_fix_steps_equals_a1111(service, tiny, sampler):
    """A1111's img2img_fix_steps: 6 steps at denoising 0.6 run exactly 6 steps, the last of a schedule of
    int(6 / 0.6) = 10 (the reference's explicit-steps path, as hires fix), instead of int(0.6 * 6) + 1 of 6."""
    picture = _picture()
    ours = _ours(service, sampler, init_image=picture, denoising_strength=0.6, steps=6, img2img_fix_steps=True)
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    reference = a1111_timestep_latents if sampler == "DDIM" else a1111_latents
    latents = reference(model.unet, cond, uncond, sampler, *(() if sampler == "DDIM" else (None,)), 6, CFG, [21],
                        64, 64, init=_init_latents(model, picture), denoising_strength=0.6)
    assert max_pixel_diff(ours.images[0], decode_truncated(model.vae, latents)[0]) <= 1
    plain = _ours(service, sampler, init_image=picture, denoising_strength=0.6, steps=6)
    assert max_pixel_diff(ours.images[0], plain.images[0]) > 3  # negative control
    assert "Steps: 6," in ours.infotexts[0]


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_img2img_extra_noise_equals_a1111(service, tiny, sampler):
    """A1111's img2img_extra_noise: the starting latents get that much more of the same noise (k-diffusion:
    as is; timestep samplers: scaled by sqrt(alpha_cumprod)), and the infotext says `Extra noise`."""
    picture = _picture()
    ours = _ours(service, sampler, init_image=picture, denoising_strength=0.6, img2img_extra_noise=0.4)
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    reference = a1111_timestep_latents if sampler == "DDIM" else a1111_latents
    latents = reference(model.unet, cond, uncond, sampler, *(() if sampler == "DDIM" else (None,)), 8, CFG, [21],
                        64, 64, init=_init_latents(model, picture), denoising_strength=0.6, img2img=True,
                        extra_noise=0.4)
    assert max_pixel_diff(ours.images[0], decode_truncated(model.vae, latents)[0]) <= 1
    plain = _ours(service, sampler, init_image=picture, denoising_strength=0.6)
    assert max_pixel_diff(ours.images[0], plain.images[0]) > 3  # negative control
    assert "Extra noise: 0.4" in ours.infotexts[0] and "Extra noise" not in plain.infotexts[0]
    assert "Extra noise" not in _ours(service, sampler, img2img_extra_noise=0.4).infotexts[0]  # txt2img


def test_extra_noise_reaches_hires_fix_as_a1111(service):
    """A1111 adds it in every sample_img2img, so hires fix's second pass gets it too."""
    hires = dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.6, steps=4)
    ours = _ours(service, img2img_extra_noise=0.5, **hires)
    plain = _ours(service, **hires)
    assert "Extra noise: 0.5" in ours.infotexts[0]
    assert max_pixel_diff(ours.images[0], plain.images[0]) > 3


def test_img2img_fix_steps_caps_the_schedule(service):
    from backend.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="denoising_strength.*img2img build a schedule"):
        _ours(service, init_image=_picture(), denoising_strength=1e-7, img2img_fix_steps=True)


def test_img2img_noise_multiplier_equals_a1111(service, tiny):
    picture = _picture()
    ours = _ours(service, init_image=picture, denoising_strength=0.6, initial_noise_multiplier=0.7)
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 8, CFG, [21], 64, 64,
                            init=_init_latents(model, picture), denoising_strength=0.6, img2img=True,
                            noise_multiplier=0.7)
    assert max_pixel_diff(ours.images[0], decode_truncated(model.vae, latents)[0]) <= 1
    plain = _ours(service, init_image=picture, denoising_strength=0.6)
    assert max_pixel_diff(ours.images[0], plain.images[0]) > 3  # negative control
    assert "Noise multiplier: 0.7" in ours.infotexts[0] and "Noise multiplier" not in plain.infotexts[0]


def test_unrounded_mask_keeps_its_fractions_as_a1111(service, tiny):
    """mask_round off: the blurred mask at latent size keeps its fractions (A1111 skips np.around), so the
    picture and the denoised latents blend along the edge."""
    from backend.generation.img2img import prepare_inpaint

    picture, mask = _picture(), Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    fields = dict(init_image=picture, mask=mask, mask_blur=8, denoising_strength=0.5,
                  inpainting_fill=MaskedContent.ORIGINAL)
    soft = _ours(service, mask_round=False, **fields)
    work = prepare_inpaint(GenerationRequest(width=64, height=64, **fields))
    fractions = np.asarray(work.latent_mask.convert("RGB").resize((8, 8), Image.BICUBIC), dtype=np.float32)[..., 0]
    fractions = fractions / 255.0
    assert ((fractions > 0.05) & (fractions < 0.95)).any()  # the blur leaves a soft edge at this size
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    keep = 1 - torch.from_numpy(fractions)[None, None]
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 8, CFG, [21], 64, 64,
                            init=_init_latents(model, picture), denoising_strength=0.5, img2img=True, keep=keep)
    theirs = work.paste_back(decode_truncated(model.vae, latents)[0])
    assert max_pixel_diff(soft.images[0], theirs) <= 1
    assert max_pixel_diff(soft.images[0], _ours(service, **fields).images[0]) > 0  # negative control: rounded


def test_latent_noise_fill_uses_the_rng_source_as_a1111(service, tiny):
    """"latent noise": the masked latents become the RNG source's noise for the job's first seeds (A1111's
    create_random_tensors in init), then img2img runs from them."""
    from backend.generation.img2img import prepare_inpaint

    picture, mask = _picture(), Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    fields = dict(init_image=picture, mask=mask, mask_blur=0, denoising_strength=0.6,
                  inpainting_fill=MaskedContent.LATENT_NOISE)
    ours = _ours(service, n_iter=2, **fields)
    work = prepare_inpaint(GenerationRequest(width=64, height=64, **fields))
    model = tiny["sd1"]
    repaint = torch.from_numpy(np.around(np.asarray(work.latent_mask.resize((8, 8), Image.BICUBIC),
                                                    dtype=np.float32) / 255))[None, None]
    noise = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(21))[None]
    init = _init_latents(model, work.image) * (1 - repaint) + noise * repaint
    cond, uncond = reference_conds(model, PROMPT, NEGATIVE)
    for index, seed in enumerate((21, 22)):  # the second batch samples with seed 22 but keeps seed 21's fill
        latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 8, CFG, [seed], 64, 64, init=init,
                                denoising_strength=0.6, img2img=True, keep=1 - repaint)
        theirs = work.paste_back(decode_truncated(model.vae, latents)[0])
        assert max_pixel_diff(ours.images[index], theirs) <= 1, seed
    other_fill = _init_latents(model, work.image) * (1 - repaint) + torch.randn(
        (4, 8, 8), generator=torch.Generator("cpu").manual_seed(22))[None] * repaint
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 8, CFG, [22], 64, 64, init=other_fill,
                            denoising_strength=0.6, img2img=True, keep=1 - repaint)
    control = work.paste_back(decode_truncated(model.vae, latents)[0])
    assert max_pixel_diff(ours.images[1], control) > 3  # control: the fill is seed 21's noise, not the batch's


NEW_OPTIONS = {  # A1111 option -> (request field, a non-default value, that value in the request)
    "upscaler_for_img2img": ("img2img_upscaler", "4x_tiny", "4x_tiny"),
    "img2img_background_color": ("img2img_background", "#102030", "#102030"),
    "inpainting_mask_weight": ("inpainting_mask_weight", 0.4, 0.4),
    "img2img_fix_steps": ("img2img_fix_steps", True, True),
    "img2img_extra_noise": ("img2img_extra_noise", 0.2, 0.2),
    "skip_early_cond": ("skip_early_cond", 0.1, 0.1),
    "always_discard_next_to_last_sigma": ("discard_penultimate_sigma", True, True),
    "sdxl_refiner_low_aesthetic_score": ("refiner_aesthetic_scores", 1.0, (1.0, 6.0)),
    "sdxl_refiner_high_aesthetic_score": ("refiner_aesthetic_scores", 9.0, (2.5, 9.0)),
    "sgm_noise_multiplier": ("sgm_noise_multiplier", True, True),
    "sigma_min": ("schedule_sigma_min", 0.1, 0.1),
    "sigma_max": ("schedule_sigma_max", 8.0, 8.0),
    "rho": ("schedule_rho", 3.0, 3.0),
}


@pytest.mark.parametrize("option", NEW_OPTIONS)
def test_img2img_and_sampling_options_reach_the_request(option):
    """Each option is applied (not merely stored): it maps to its request field, whose default is A1111's."""
    from backend.options import IMPLEMENTED, UNIMPLEMENTED_GENERATION, load_defaults, request_fields

    field, value, expected = NEW_OPTIONS[option]
    assert option in IMPLEMENTED and option not in UNIMPLEMENTED_GENERATION
    assert request_fields({option: value})[field] == expected
    assert request_fields(load_defaults())[field] == getattr(GenerationRequest(), field)
