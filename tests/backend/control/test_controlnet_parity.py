"""ControlNet on the one loop against a reference that adds a diffusers ControlNetModel's residuals to the
k-diffusion sampling A1111 runs, by the sd-webui-controlnet extension's rules (weight, control modes, guidance
window per `sampling_step / total_sampling_steps`, units summed), on the tiny checkpoints' real-layout files."""

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from backend.control.units import ControlUnit
from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from tests.conftest import controlnet_for
from tests.fixtures.a1111_reference import a1111_latents, decode_truncated
from tests.fixtures.reference import max_pixel_diff, reference_conds

SIZE = 64


def _picture(seed: int = 5) -> Image.Image:
    """Shapes with edges for canny: a disc and a bar on a gradient."""
    rng = np.random.default_rng(seed)
    img = np.tile(np.linspace(40, 200, SIZE, dtype=np.uint8)[None, :, None], (SIZE, 1, 3))
    cv2.circle(img, (int(rng.integers(20, 44)), 30), 14, (250, 30, 30), -1)
    cv2.rectangle(img, (8, 46), (56, 54), (20, 220, 90), -1)
    return Image.fromarray(img)


def _canny_hint(picture: Image.Image, low: int = 100, high: int = 200) -> torch.Tensor:
    """The extension's canny map at the generation size (64 short side: no resize, no padding)."""
    edges = cv2.Canny(np.asarray(picture), low, high)
    return torch.from_numpy(np.stack([edges] * 3, axis=2)).float().div(255).permute(2, 0, 1)[None]


def _unit(**kw) -> ControlUnit:
    base = dict(model="control_sd15_tiny", module="canny", image=_picture(), processor_res=SIZE, threshold_a=100,
                threshold_b=200)
    base.update(kw)
    return ControlUnit(**base)


def _req(*units, **kw) -> GenerationRequest:
    base = dict(prompt="a castle", negative_prompt="blur", steps=6, width=SIZE, height=SIZE, seed=77, cfg_scale=7.0,
                sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False, control_units=tuple(units))
    base.update(kw)
    return GenerationRequest(**base)


def _reference(tiny, units: list[dict], family="sd1", steps=6, sampler="Euler", **kw):
    model = tiny[family]
    cond, uncond = reference_conds(model, "a castle", "blur")
    latents = a1111_latents(model.unet, cond, uncond, sampler, None, steps, 7.0, [77], SIZE, SIZE,
                            sdxl=family == "sdxl", control={"units": units}, **kw)
    return decode_truncated(model.vae, latents)[0]


@pytest.fixture(scope="module")
def sd1_net(tiny):
    return controlnet_for(tiny, "sd1")


@pytest.mark.parametrize("mode", ["Balanced", "My prompt is more important", "ControlNet is more important"])
def test_canny_unit_equals_the_reference_in_each_control_mode(service, tiny, sd1_net, mode):
    ours = service.generate(_req(_unit(weight=0.8, control_mode=mode)))
    ref = _reference(tiny, [{"net": sd1_net, "hint": _canny_hint(_picture()), "weight": 0.8, "mode": mode}])
    assert max_pixel_diff(ours.images[0], ref) <= 3
    plain = service.generate(_req())
    assert max_pixel_diff(ours.images[0], plain.images[0]) > 3  # negative control: the unit changes the picture
    shifted = _reference(tiny, [{"net": sd1_net, "hint": torch.roll(_canny_hint(_picture()), 12, dims=3),
                                 "weight": 0.8, "mode": mode}])
    assert max_pixel_diff(ours.images[0], shifted) > 3  # and so does where its edges are
    assert f'ControlNet 0: "Module: canny, Model: control_sd15_tiny, Weight: 0.8, Resize Mode: Crop and Resize, ' \
           f'Processor Res: 64, Threshold A: 100, Threshold B: 200, Guidance Start: 0.0, Guidance End: 1.0, ' \
           f'Pixel Perfect: False, Control Mode: {mode}"' in ours.infotexts[0]


def test_weight_and_guidance_window_follow_the_extension_step_count(service, tiny, sd1_net):
    ours = service.generate(_req(_unit(weight=1.5, guidance_start=0.2, guidance_end=0.6)))
    hint = _canny_hint(_picture())
    ref = _reference(tiny, [{"net": sd1_net, "hint": hint, "weight": 1.5, "start": 0.2, "end": 0.6}])
    assert max_pixel_diff(ours.images[0], ref) <= 3
    whole = _reference(tiny, [{"net": sd1_net, "hint": hint, "weight": 1.5}])
    assert max_pixel_diff(ours.images[0], whole) > 3  # negative control: the window matters



def test_two_units_are_summed_and_a_second_order_sampler_counts_steps_as_a1111(service, tiny, sd1_net):
    second = _picture(9)
    ours = service.generate(_req(_unit(weight=0.7), _unit(model="diffusers_sd15_tiny", module="invert",
                                                          image=second, guidance_end=0.5), sampler_name="Heun"))
    inverted = torch.from_numpy(255 - np.asarray(second)).float().div(255).permute(2, 0, 1)[None]
    ref = _reference(tiny, [{"net": sd1_net, "hint": _canny_hint(_picture()), "weight": 0.7},
                            {"net": sd1_net, "hint": inverted, "end": 0.5}], sampler="Heun")
    assert max_pixel_diff(ours.images[0], ref) <= 3
    first_only = _reference(tiny, [{"net": sd1_net, "hint": _canny_hint(_picture()), "weight": 0.7}], sampler="Heun")
    assert max_pixel_diff(ours.images[0], first_only) > 3  # control: the second unit counts
    assert "ControlNet 1: \"Module: invert, Model: diffusers_sd15_tiny" in ours.infotexts[0]


def test_every_layout_of_one_controlnet_makes_the_same_picture(service):
    images = [service.generate(_req(_unit(model=name))).images[0]
              for name in ("control_sd15_tiny", "control_v11p_sd15_tiny", "diffusers_sd15_tiny")]
    assert all(np.array_equal(np.asarray(images[0]), np.asarray(other)) for other in images[1:])


def test_sdxl_controlnet_in_the_diffusers_layout(service, tiny):
    net = controlnet_for(tiny, "sdxl")
    for mode in ("Balanced", "My prompt is more important"):
        unit = _unit(model="diffusers_xl_tiny", control_mode=mode)
        ours = service.generate(_req(unit, checkpoint="sdxl.safetensors"))
        cond, uncond = reference_conds(tiny["sdxl"], "a castle", "blur")
        latents = a1111_latents(tiny["sdxl"].unet, cond, uncond, "Euler", None, 6, 7.0, [77], SIZE, SIZE, sdxl=True,
                                control={"units": [{"net": net, "hint": _canny_hint(_picture()), "mode": mode}]})
        assert max_pixel_diff(ours.images[0], decode_truncated(tiny["sdxl"].vae, latents)[0]) <= 3
    ldm = service.generate(_req(_unit(model="control_xl_tiny"), checkpoint="sdxl.safetensors"))
    assert max_pixel_diff(ldm.images[0], ours.images[0]) > 3  # the other mode gave another picture
    balanced = service.generate(_req(_unit(model="diffusers_xl_tiny"), checkpoint="sdxl.safetensors"))
    assert np.array_equal(np.asarray(ldm.images[0]), np.asarray(balanced.images[0]))


def test_img2img_unit_takes_the_init_picture_and_counts_t_enc_plus_one(service, tiny, sd1_net):
    """Denoising 0.6 of 6 steps: t_enc = 3, so the window counts 4 steps; the step the sampler last reported
    is 0, 0, 1, 2 at the four model calls, so an end of 0.2 stops the unit after the second call (counting 6
    steps it would run a third: what an end of 0.3 gives, the control)."""
    picture = _picture(3)
    model = tiny["sd1"]
    req = _req(_unit(image=None, guidance_end=0.2), init_image=picture, denoising_strength=0.6)
    ours = service.generate(req)
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        init = model.vae.encode(pixels).latent_dist.mode() * model.vae.config.scaling_factor
    cond, uncond = reference_conds(model, "a castle", "blur")
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 6, 7.0, [77], SIZE, SIZE, init=init,
                            denoising_strength=0.6, img2img=True,
                            control={"units": [{"net": sd1_net, "hint": _canny_hint(picture), "end": 0.2}]})
    assert max_pixel_diff(ours.images[0], decode_truncated(model.vae, latents)[0]) <= 3
    wider = a1111_latents(model.unet, cond, uncond, "Euler", None, 6, 7.0, [77], SIZE, SIZE, init=init,
                          denoising_strength=0.6, img2img=True,
                          control={"units": [{"net": sd1_net, "hint": _canny_hint(picture), "end": 0.3}]})
    assert max_pixel_diff(ours.images[0], decode_truncated(model.vae, wider)[0]) > 3  # control: the count


def test_hires_pass_uses_the_map_at_the_final_size_and_soft_canny(service, tiny, sd1_net):
    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6)
    both = service.generate(_req(_unit(), **hires))
    low_only = service.generate(_req(_unit(hr_option="Low res only"), **hires))
    high_only = service.generate(_req(_unit(hr_option="High res only"), **hires))
    plain = service.generate(_req(**hires))
    assert len({np.asarray(i.images[0]).tobytes() for i in (both, low_only, high_only, plain)}) == 4
    assert len(both.control_maps) == 2 and both.control_maps[0].size == (128, 128)  # hires map first


def test_controlnet_for_another_architecture_is_refused_by_name(service):
    with pytest.raises(InvalidRequest, match="is for SDXL"):
        service.generate(_req(_unit(model="diffusers_xl_tiny")))
    with pytest.raises(InvalidRequest, match="no ControlNet model"):
        service.submit(_req(_unit(model="nope")))
    with pytest.raises(InvalidRequest, match="no input image"):
        service.submit(_req(_unit(image=None)))


def test_low_vram_unit_gives_the_same_picture(service):
    normal = service.generate(_req(_unit()))
    low = service.generate(_req(dataclasses.replace(_unit(), low_vram=True)))
    assert np.array_equal(np.asarray(normal.images[0]), np.asarray(low.images[0]))


def test_control_modes_and_a_zero_weight_differ_as_they_should(service):
    images = {mode: np.asarray(service.generate(_req(_unit(control_mode=mode))).images[0]) for mode in
              ("Balanced", "My prompt is more important", "ControlNet is more important")}
    assert len({a.tobytes() for a in images.values()}) == 3
    zero = service.generate(_req(_unit(weight=0.0))).images[0]
    assert np.array_equal(np.asarray(zero), np.asarray(service.generate(_req()).images[0]))


def _masked_picture():
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 20:44] = 255
    return _picture(4), Image.fromarray(mask)


def _latent_of(model, pixels01: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.vae.encode(pixels01 * 2 - 1).latent_dist.mode() * model.vae.config.scaling_factor


def test_inpaint_unit_shows_masked_pixels_as_minus_one(service, tiny, sd1_net):
    picture, mask = _masked_picture()
    ours = service.generate(_req(_unit(module="inpaint", image=picture, mask=mask, weight=2.0)))
    rgb = torch.from_numpy(np.asarray(picture)).float().div(255).permute(2, 0, 1)[None]
    m = torch.from_numpy(np.asarray(mask) > 127).float()[None, None]
    ref = _reference(tiny, [{"net": sd1_net, "hint": rgb * (1 - m) - m, "weight": 2.0}])
    assert max_pixel_diff(ours.images[0], ref) <= 3
    plain_rgb = _reference(tiny, [{"net": sd1_net, "hint": rgb, "weight": 2.0}])
    assert max_pixel_diff(ours.images[0], plain_rgb) > 3  # negative control: the mask matters
    assert ours.control_maps[0].mode == "RGBA"


def test_inpaint_only_keeps_the_picture_outside_the_mask(service, tiny, sd1_net):
    picture, mask = _masked_picture()
    ours = service.generate(_req(_unit(module="inpaint_only", image=picture, mask=mask, weight=0.9)))
    model = tiny["sd1"]
    rgb = torch.from_numpy(np.asarray(picture)).float().div(255).permute(2, 0, 1)[None]
    m = torch.from_numpy(np.asarray(mask) > 127).float()[None, None]
    unit = {"net": sd1_net, "hint": rgb * (1 - m) - m, "weight": 0.9, "adjust": "inpaint_only",
            "latent": _latent_of(model, rgb), "mask": m}
    cond, uncond = reference_conds(model, "a castle", "blur")
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 6, 7.0, [77], SIZE, SIZE,
                            control={"units": [unit]})
    soft = cv2.blur(cv2.dilate(m[0, 0].numpy(), np.ones((7, 7), np.uint8)), (7, 7))
    soft = torch.from_numpy(soft)[None, None]

    def paste(pixels):
        return (soft * pixels.clip(0, 1) + (1 - soft) * rgb).clip(0, 1)

    ref = decode_truncated(model.vae, latents, paste)[0]
    assert max_pixel_diff(ours.images[0], ref) <= 3
    outside = np.asarray(ours.images[0])[:6, :6].astype(int) - np.asarray(picture)[:6, :6]
    assert np.abs(outside).max() <= 1  # pasted back (up to 8-bit truncation)


def test_tile_colorfix_and_recolor_follow_the_extension(service, tiny, sd1_net):
    picture = _picture(6)
    model = tiny["sd1"]
    rgb = torch.from_numpy(np.asarray(picture)).float().div(255).permute(2, 0, 1)[None]
    ours = service.generate(_req(_unit(module="tile_colorfix", image=picture, threshold_a=4, weight=0.6)))
    ref = _reference(tiny, [{"net": sd1_net, "hint": rgb, "weight": 0.6, "adjust": "colorfix", "k": 4,
                             "latent": _latent_of(model, rgb)}])
    assert max_pixel_diff(ours.images[0], ref) <= 3
    no_fix = _reference(tiny, [{"net": sd1_net, "hint": rgb, "weight": 0.6}])
    assert max_pixel_diff(ours.images[0], no_fix) > 3  # negative control: the correction matters
    recolored = service.generate(_req(_unit(module="recolor_luminance", image=picture, threshold_a=1.0)))
    # the extension's map: OpenCV's BGR-to-LAB applied to the RGB picture (its quirk), as grey
    lightness = cv2.cvtColor(np.asarray(picture), cv2.COLOR_BGR2LAB)[:, :, 0]
    gray = np.stack([lightness] * 3, axis=2)
    hint = torch.from_numpy(gray).float().div(255).permute(2, 0, 1)[None]

    def put_lightness(pixels):
        h = (pixels[0].numpy().transpose(1, 2, 0) * 255).clip(0, 255).astype(np.uint8)
        h = cv2.cvtColor(h, cv2.COLOR_RGB2LAB)
        h[:, :, 0] = lightness
        h = cv2.cvtColor(h, cv2.COLOR_LAB2RGB)
        return torch.from_numpy((h.astype(np.float32) / 255).transpose(2, 0, 1))[None].clip(0, 1)

    cond, uncond = reference_conds(model, "a castle", "blur")
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 6, 7.0, [77], SIZE, SIZE,
                            control={"units": [{"net": sd1_net, "hint": hint}]})
    assert max_pixel_diff(recolored.images[0], decode_truncated(model.vae, latents, put_lightness)[0]) <= 3


def test_hires_fix_second_pass_with_the_final_size_map_and_soft_canny(service, tiny, sd1_net):
    """The second pass sees the map fitted to 128x128 and, for canny, the soft weights (the extension forces
    them in the hires pass); its guidance window restarts with the pass (t_enc + 1 steps)."""
    import torch.nn.functional as F

    from backend.control.images import fit

    model = tiny["sd1"]
    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6, steps=4)
    ours = service.generate(_req(_unit(guidance_end=0.7), **hires))
    edges = np.stack([cv2.Canny(np.asarray(_picture()), 100, 200)] * 3, axis=2)
    big = torch.from_numpy(fit(edges, "Crop and Resize", 128, 128)).float().div(255).permute(2, 0, 1)[None]
    cond, uncond = reference_conds(model, "a castle", "blur")

    def two_passes(*second_units):
        first = a1111_latents(model.unet, cond, uncond, "Euler", None, 4, 7.0, [77], SIZE, SIZE, control={
            "units": [{"net": sd1_net, "hint": _canny_hint(_picture()), "end": 0.7}]})
        init = F.interpolate(first, size=(16, 16), mode="bilinear", antialias=False)
        second = a1111_latents(model.unet, cond, uncond, "Euler", None, 4, 7.0, [77], 128, 128, init=init,
                               denoising_strength=0.6, control={"units": list(second_units)})
        return decode_truncated(model.vae, second)[0]

    expected = two_passes({"net": sd1_net, "hint": big, "end": 0.7, "soft": True})
    assert max_pixel_diff(ours.images[0], expected) <= 3
    assert max_pixel_diff(ours.images[0], two_passes({"net": sd1_net, "hint": big, "end": 0.7})) > 3  # not soft
    low_only = service.generate(_req(_unit(guidance_end=0.7, hr_option="Low res only"), **hires))
    assert max_pixel_diff(low_only.images[0], two_passes()) <= 3


def test_sd2_controlnet_on_an_sd2_v_checkpoint(service, tiny):
    """SD 2.x (v-prediction here): the LDM .pth in a sub-folder, found by its stem."""
    net = controlnet_for(tiny, "sd2")
    ours = service.generate(_req(_unit(model="control_sd21_tiny"), checkpoint="sd2-v.safetensors"))
    model = tiny["sd2"]
    cond, uncond = reference_conds(model, "a castle", "blur")
    latents = a1111_latents(model.unet, cond, uncond, "Euler", None, 6, 7.0, [77], SIZE, SIZE, v_prediction=True,
                            control={"units": [{"net": net, "hint": _canny_hint(_picture())}]})
    assert max_pixel_diff(ours.images[0], decode_truncated(model.vae, latents)[0]) <= 3
    plain = service.generate(_req(checkpoint="sd2-v.safetensors"))
    assert max_pixel_diff(ours.images[0], plain.images[0]) > 3


@pytest.mark.parametrize("mode", ["Just Resize", "Resize and Fill"])
def test_resize_modes_bring_a_wide_picture_to_the_generation_size(service, tiny, sd1_net, mode):
    """A 96x48 picture (many colours: area/cubic resampling) with preprocessor none, at 64x64: Just Resize
    stretches it; Resize and Fill fits it and pads with the border's median colour."""
    y, x = np.mgrid[0:48, 0:96]
    wide = np.stack([x * 255 // 95, y * 255 // 47, (x * 3 + y * 5) % 256], axis=2).astype(np.uint8)
    if mode == "Just Resize":
        hint_map = cv2.resize(wide, (64, 64), interpolation=cv2.INTER_AREA)
    else:
        inner = cv2.resize(wide, (64, 32), interpolation=cv2.INTER_AREA)
        borders = np.concatenate([wide[0], wide[-1], wide[:, 0], wide[:, -1]])
        hint_map = np.tile(np.median(borders, axis=0).astype(np.uint8)[None, None], (64, 64, 1))
        hint_map[16:48] = inner
    hint = torch.from_numpy(hint_map).float().div(255).permute(2, 0, 1)[None]
    ours = service.generate(_req(_unit(module="none", image=Image.fromarray(wide), resize_mode=mode)))
    assert max_pixel_diff(ours.images[0], _reference(tiny, [{"net": sd1_net, "hint": hint}])) <= 3
    cropped = torch.from_numpy(cv2.resize(wide, (128, 64), interpolation=cv2.INTER_AREA)[:, 32:96].copy()).float()
    crop_hint = cropped.div(255).permute(2, 0, 1)[None]
    assert max_pixel_diff(ours.images[0], _reference(tiny, [{"net": sd1_net, "hint": crop_hint}])) > 3  # control
