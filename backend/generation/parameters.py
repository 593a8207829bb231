"""A1111's generation parameters (infotext) of an image, from the job's own record: the request, and what
the job ran with (its model, VAE, sampler, networks and memory measures), never from what is loaded now."""

from __future__ import annotations

from backend import infotext
from backend.generation.requests import MASKED_CONTENT_LABELS, GenerationRequest, MaskedContent
from backend.generation.results import GenerationResult
from backend.memory.policy import Measures
from backend.registry import ModelFile
from backend.samplers import RHO_SCHEDULES, Sampler, hires_infotext_schedule, infotext_schedule, resolve

VERSION = "v0.1.0"


def image_parameters(req: GenerationRequest, result: GenerationResult, seed: int,
                     measures: Measures | None = None) -> str:
    """A1111's infotext of one image, built from the job's own record (`result`) alone."""
    checkpoint, vae = result.checkpoint, result.vae  # the job's own record, whatever is loaded now
    hires_fix = req.enable_hr and req.kind == "txt2img"
    params: dict[str, object] = {
        "Steps": req.steps,
        "Sampler": result.sampler.sampler.name,
        "Schedule type": infotext_schedule(result.sampler.sampler, req.scheduler),
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": checkpoint.short_hash,
        "Model": checkpoint.model_name,
        "VAE hash": vae.short_hash if vae else None,
        "VAE": vae.name if vae else None,
        "Variation seed": req.subseed + (seed - req.seed) if req.subseed_strength else None,
        "Variation seed strength": req.subseed_strength or None,
        "Seed resize from": f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
        if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0 else None,
        "Denoising strength": req.denoising_strength if req.kind == "img2img" or hires_fix else None,
        "Conditional mask weight": req.inpainting_mask_weight if result.inpainting_conditioning else None,
        "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        "Eta": req.eta_for(False) if result.sampler.sampler.noise and req.eta_for(False) != 1.0 else None,
        "Eta DDIM": req.eta_for(True) if result.sampler.sampler.uses_ddim_eta and req.eta_for(True) else None,
        **_sigma_options(req, result.sampler.sampler),
        "ENSD": req.eta_noise_seed_delta if req.eta_noise_seed_delta and result.sampler.sampler.ancestral
        else None,
        "Token merging ratio": req.tome_ratio() or None,
        "Token merging ratio hr": req.tome_ratio(hires=True) or None if hires_fix else None,
        "RNG": req.rng_source if req.rng_source != "GPU" else None,
        "Tiling": "True" if req.tiling else None,
    }
    if hires_fix:
        params.update(_hires_params(req, result.hr_checkpoint))
    if req.is_inpainting:
        blur_x, blur_y = req.mask_blurs  # A1111 writes one blur only, and only when they agree
        params["Mask blur"] = blur_x if blur_x == blur_y and blur_x > 0 else None
        if req.inpaint_full_res:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = req.inpaint_full_res_padding
        if req.inpainting_fill != MaskedContent.ORIGINAL:  # A1111 names only the others
            params["Masked content"] = MASKED_CONTENT_LABELS[req.inpainting_fill]
        if req.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
    if result.hypernetworks:
        params["Hypernet"] = ", ".join(h.name for h, _ in result.hypernetworks)
        params["Hypernet hash"] = ", ".join(h.short_hash for h, _ in result.hypernetworks)
    if result.networks:
        params["Lora hashes"] = ", ".join(f"{w.typed_name}: {w.network.short_hash}" for w in result.networks)
    if result.embeddings:
        params["TI hashes"] = ", ".join(f"{e.name}: {e.short_hash}" for e in result.embeddings)
    if req.emphasis != "Original" and _uses_brackets(req):
        params["Emphasis"] = req.emphasis
    if req.kind == "img2img" and req.initial_noise_multiplier != 1.0:
        params["Noise multiplier"] = req.initial_noise_multiplier
    if req.pad_conds and result.prompt_chunks[0] != result.prompt_chunks[1]:  # A1111: only when it padded
        params["Pad conds v0" if req.pad_conds == "v0" else "Pad conds"] = "True"
    if req.s_min_uncond > 0:
        params["NGMS"] = req.s_min_uncond
        params["NGMS all steps"] = "True" if req.s_min_uncond_all else None
    params.update(result.control_params)
    if req.discard_penultimate_sigma and not all(s.discard_penultimate for s, _ in _passes(req, result)):
        params["Discard penultimate sigma"] = "True"  # A1111 names it where the option changed a schedule
    if req.sgm_noise_multiplier and result.sampler.sampler.k_function:  # k-diffusion's txt2img start only
        params["SGM noise multiplier"] = "True"
    params.update(_schedule_limits(req, result))
    if req.img2img_extra_noise > 0 and (req.kind == "img2img" or hires_fix):  # set as A1111 samples from a picture
        params["Extra noise"] = req.img2img_extra_noise
    if req.skip_early_cond > 0:  # A1111 names it once a call skipped the uncond: the first call always does
        params["Skip Early CFG"] = req.skip_early_cond
    params.update(req.extra_params)
    if result.refiner is not None:  # A1111 adds these when the refiner takes over, after the other keys
        if hires_fix and req.hires_refiner_pass != "second pass":
            params["Hires refiner"] = req.hires_refiner_pass
        params["Refiner"] = _short_title(result.refiner)
        params["Refiner switch at"] = req.refiner_switch_at
    if measures is not None and measures.fallbacks:
        params["Memory fallback"] = " + ".join(measures.fallbacks)
    params["Version"] = VERSION
    return infotext.build(req.prompt, req.negative_prompt, params)


def _uses_brackets(req: GenerationRequest) -> bool:
    """A1111 writes `Emphasis` only when a prompt could use it."""
    return any("(" in text or "[" in text for text in (req.prompt, req.negative_prompt))


def _sigma_options(req: GenerationRequest, sampler) -> dict:
    """A1111's `Sigma churn/tmin/tmax/noise` infotext keys: written when the sampler uses them and they are not
    the defaults."""
    churns = sampler.k_function in ("euler", "heun", "dpm_2")
    return {"Sigma churn": req.s_churn if churns and req.s_churn else None,
            "Sigma tmin": req.s_tmin if churns and req.s_tmin else None,
            "Sigma tmax": req.s_tmax if churns and req.s_tmax else None,
            "Sigma noise": req.s_noise if (churns or sampler.noise) and req.s_noise != 1.0 else None}


def _short_title(checkpoint: ModelFile) -> str:
    """A1111's short title: the name and the short hash."""
    return f"{checkpoint.model_name} [{checkpoint.short_hash}]" if checkpoint.short_hash else checkpoint.model_name


def _hires_params(req: GenerationRequest, hr_checkpoint: ModelFile | None) -> dict:
    """A1111's hires fix infotext keys, in its order (StableDiffusionProcessingTxt2Img.init)."""
    params: dict[str, object] = {}
    if hr_checkpoint is not None:
        params["Hires checkpoint"] = _short_title(hr_checkpoint)
    if req.hr_sampler_name and req.hr_sampler_name != req.sampler_name:
        params["Hires sampler"] = req.hr_sampler_name
    if req.hr_prompt and req.hr_prompt != req.prompt:
        params["Hires prompt"] = req.hr_prompt
    if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt:
        params["Hires negative prompt"] = req.hr_negative_prompt
    first = resolve(req.sampler_name, req.scheduler).sampler
    second = resolve(req.hr_sampler_name or req.sampler_name, req.hr_scheduler or req.scheduler).sampler
    params["Hires schedule type"] = hires_infotext_schedule(first, req.scheduler, second,
                                                            req.hr_scheduler or req.scheduler)
    if req.hr_resize_x == 0 and req.hr_resize_y == 0:
        params["Hires upscale"] = req.hr_scale
    else:
        params["Hires resize"] = f"{req.hr_resize_x}x{req.hr_resize_y}"
    if req.hr_second_pass_steps:
        params["Hires steps"] = req.hr_second_pass_steps
    if req.hr_upscaler is not None:
        params["Hires upscaler"] = req.hr_upscaler
    return params


def _passes(req: GenerationRequest, result: GenerationResult) -> list[tuple[Sampler, str | None]]:
    """(sampler, schedule as chosen) of each of the job's passes: the first, and hires fix's second."""
    passes = [(result.sampler.sampler, req.scheduler)]
    if req.enable_hr and req.kind == "txt2img":
        chosen = req.hr_scheduler or req.scheduler
        passes.append((resolve(req.hr_sampler_name or req.sampler_name, chosen).sampler, chosen))
    return passes


def _schedule_limits(req: GenerationRequest, result: GenerationResult) -> dict[str, object]:
    """A1111 names its sigma_min, sigma_max and rho options where a pass's schedule is a scheduler function (a
    schedule chosen, or the sampler's own; not "Automatic" on Euler and its like), rho where it has one."""
    labels = [infotext_schedule(s, chosen) for s, chosen in _passes(req, result) if s.k_function]
    functions = [label for label in labels if label != "Automatic"]
    return {"Schedule min sigma": req.schedule_sigma_min or None if functions else None,
            "Schedule max sigma": req.schedule_sigma_max or None if functions else None,
            "Schedule rho": req.schedule_rho or None if any(x in RHO_SCHEDULES for x in functions) else None}
