"""The refiner as A1111 switches to it: at the first model call whose (999 - t) / 1000 reaches the switch value,
the refiner's encoders, UNet and VAE take over the same latent and sigma schedule (here SD 2-v refining SD 1)."""

import dataclasses

import numpy as np
import pytest

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from tests.fixtures.a1111_reference import a1111_latents, decode_truncated
from tests.fixtures.reference import max_pixel_diff, reference_conds


def _req(**kw):
    base = dict(prompt="a castle", negative_prompt="blur", steps=6, width=64, height=64, seed=77, cfg_scale=7.0,
                sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def _a1111(tiny, switch_at):
    sd1, sd2 = tiny["sd1"], tiny["sd2"]
    cond, uncond = reference_conds(sd1, "a castle", "blur")
    refiner_cond, refiner_uncond = reference_conds(sd2, "a castle", "blur")
    refiner = {"unet": sd2.unet, "cond": refiner_cond, "uncond": refiner_uncond, "v_prediction": True,
               "switch_at": switch_at}
    latents = a1111_latents(sd1.unet, cond, uncond, "Euler", None, 6, 7.0, [77], 64, 64, refiner=refiner)
    return decode_truncated(sd2.vae, latents)[0]


def test_refiner_takes_over_where_a1111_switches(service, tiny):
    ours = service.generate(_req(refiner_checkpoint="sd2-v", refiner_switch_at=0.5))
    assert max_pixel_diff(ours.images[0], _a1111(tiny, 0.5)) <= 3
    assert max_pixel_diff(ours.images[0], _a1111(tiny, 0.8)) > 3  # negative control: another switch point
    title = service.registry.find_checkpoint("sd2-v.safetensors")
    assert f"Refiner: {title.model_name} [{title.short_hash}], Refiner switch at: 0.5" in ours.infotexts[0]
    again = service.generate(_req())  # the next request is back on the base model
    assert "Refiner" not in again.infotexts[0] and max_pixel_diff(again.images[0], ours.images[0]) > 3


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM"])
def test_refiner_at_one_never_switches(service, sampler):
    plain = service.generate(_req(sampler_name=sampler))
    at_one = service.generate(_req(sampler_name=sampler, refiner_checkpoint="sd2-v", refiner_switch_at=1.0))
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(at_one.images[0]))
    assert "Refiner" not in at_one.infotexts[0]


def test_refiner_switches_timestep_samplers_too(service):
    plain = service.generate(_req(sampler_name="DDIM"))
    refined = service.generate(_req(sampler_name="DDIM", refiner_checkpoint="sd2-v", refiner_switch_at=0.5))
    assert max_pixel_diff(plain.images[0], refined.images[0]) > 3 and "Refiner: sd2-v" in refined.infotexts[0]


def test_with_hires_fix_the_refiner_runs_in_the_second_pass(service):
    hires = dict(enable_hr=True, hr_scale=2.0, hr_upscaler="Latent", denoising_strength=0.6, steps=4)
    refined = service.generate(_req(refiner_checkpoint="sd2-v", refiner_switch_at=0.0, **hires))
    by_hires_checkpoint = service.generate(_req(hr_checkpoint="sd2-v", **hires))
    assert np.array_equal(np.asarray(refined.images[0]), np.asarray(by_hires_checkpoint.images[0]))
    assert "Hires refiner" not in refined.infotexts[0]
    first = service.generate(_req(refiner_checkpoint="sd2-v", refiner_switch_at=0.0, hires_refiner_pass="first pass",
                                  **hires))
    on_refiner = service.generate(_req(**{**hires, "checkpoint": "sd2-v.safetensors"}))
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(on_refiner.images[0]))
    assert "Hires refiner: first pass, Refiner: sd2-v" in first.infotexts[0]


def test_unknown_refiner_is_refused_by_name(service):
    with pytest.raises(InvalidRequest, match="refiner_checkpoint"):
        service.submit(_req(refiner_checkpoint="nope"))
    with pytest.raises(InvalidRequest, match="refiner_switch_at"):
        service.submit(dataclasses.replace(_req(refiner_checkpoint="sd2-v"), refiner_switch_at=1.5))


def test_sdxl_refiner_layout_with_its_aesthetic_scores(service, tiny):
    """SDXL's refiner file (bigG alone, size + crop + aesthetic score): A1111 conditions the prompt on 6.0 and
    the negative prompt on 2.5."""
    base, refiner_model = tiny["sdxl"], tiny["sdxl_refiner"]
    ours = service.generate(_req(checkpoint="sdxl.safetensors", refiner_checkpoint="sdxl-refiner",
                                 refiner_switch_at=0.5))
    cond, uncond = reference_conds(base, "a castle", "blur")
    refiner_cond, refiner_uncond = reference_conds(refiner_model, "a castle", "blur")

    def theirs(high, low):
        refiner = {"unet": refiner_model.unet, "cond": {**refiner_cond, "added": [64, 64, 0, 0, high]},
                   "uncond": {**refiner_uncond, "added": [64, 64, 0, 0, low]}, "switch_at": 0.5}
        latents = a1111_latents(base.unet, cond, uncond, "Euler", None, 6, 7.0, [77], 64, 64, sdxl=True,
                                refiner=refiner)
        return decode_truncated(refiner_model.vae, latents)[0]

    assert max_pixel_diff(ours.images[0], theirs(6.0, 2.5)) <= 3
    unrefined = decode_truncated(base.vae, a1111_latents(base.unet, cond, uncond, "Euler", None, 6, 7.0, [77], 64, 64,
                                                         sdxl=True))[0]
    assert max_pixel_diff(ours.images[0], unrefined) > 3  # control: the refiner took over
    # the scores' effect on a tiny random UNet is too small to see in pixels: check what the refiner was given
    seen = []
    unet = service.models.get(service.registry.find_checkpoint("sdxl-refiner"), None).unet
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].tolist()), with_kwargs=True)
    try:
        service.generate(_req(checkpoint="sdxl.safetensors", refiner_checkpoint="sdxl-refiner",
                              refiner_switch_at=0.5))
        assert seen and all(rows == [[64, 64, 0, 0, 2.5], [64, 64, 0, 0, 6.0]] for rows in seen)  # uncond, cond
        seen.clear()  # A1111's sdxl_refiner_low/high_aesthetic_score options
        service.generate(_req(checkpoint="sdxl.safetensors", refiner_checkpoint="sdxl-refiner",
                              refiner_switch_at=0.5, refiner_aesthetic_scores=(1.5, 8.0)))
        assert seen and all(rows == [[64, 64, 0, 0, 1.5], [64, 64, 0, 0, 8.0]] for rows in seen)
    finally:
        handle.remove()


def test_a_diffusers_folder_refiner_equals_its_single_file(tiny, tmp_path):
    """stabilityai's refiner as a diffusers folder (no first text encoder) loads and refines as the file does."""
    from tests.conftest import build_backend
    from tests.fixtures import tiny_models
    from tests.fixtures.reference import reference_pipeline

    folder = tmp_path / "models" / "Stable-diffusion"
    tiny_models.write_checkpoint(tiny["sdxl"], folder / "sdxl.safetensors")
    tiny_models.write_checkpoint(tiny["sdxl_refiner"], folder / "refiner-file.safetensors")
    reference_pipeline(tiny["sdxl_refiner"]).save_pretrained(str(folder / "refiner-folder"), safe_serialization=True)
    svc = build_backend(tmp_path / "models", tmp_path / "outputs")
    try:
        by_file, by_folder = (svc.generate(_req(checkpoint="sdxl.safetensors", refiner_checkpoint=name,
                                                refiner_switch_at=0.5)).images[0]
                              for name in ("refiner-file", "refiner-folder"))
        unrefined = svc.generate(_req(checkpoint="sdxl.safetensors")).images[0]
    finally:
        svc.shutdown()
    assert max_pixel_diff(by_file, by_folder) <= 1
    assert max_pixel_diff(by_folder, unrefined) > 3  # control: the folder's refiner did take over
