"""API bodies -> backend requests, and results -> A1111 response shapes."""

from __future__ import annotations

import json
from collections.abc import Callable

from backend.api.images import decode_b64_image, encode_png
from backend.api.models import Img2ImgBody, Txt2ImgBody
from backend.errors import InvalidRequest
from backend.generation.requests import SAME_CHECKPOINT, GenerationRequest, MaskedContent, ResizeMode
from backend.options import IMPLEMENTED
from backend.options import request_fields as option_fields
from backend.service import VERSION, GenerationResult
from backend.settings import Limits


# A1111 request fields this project accepts but does not implement yet: a request that turns one on still
# runs, and its answer says that the field had no effect (never a silent 200).
UNIMPLEMENTED_FIELDS = {
    "restore_faces": lambda v: bool(v), "alwayson_scripts": lambda v: bool(v),
}
# Request fields A1111 accepts but overrides with its options (so they have no effect there either).
OPTION_FIELDS = ("s_churn", "s_tmin", "s_tmax", "s_noise")


def to_request(body: Txt2ImgBody, options: dict, overrides: dict, limits: Limits,
               find_script: Callable[[str, list], object]) -> tuple[GenerationRequest, list]:
    """The body with the current options and this request's (checked) override_settings -> a request, and
    warnings about what it asked for that has no effect. `find_script(script_name, script_args)` gives the
    img2img script; txt2img has none here (A1111 answers an unknown script with an error too)."""
    extra = body.model_extra or {}
    script = None
    if extra.get("script_name"):
        if not isinstance(body, Img2ImgBody):
            raise InvalidRequest("script_name", f"unknown script '{extra['script_name']}': txt2img has no scripts "
                                                "here (GET /sdapi/v1/scripts)")
        args = extra.get("script_args") or []
        if not isinstance(args, list):
            raise InvalidRequest("script_args", "expected a list, in the order of the script's controls")
        script = find_script(str(extra["script_name"]), args)
    settings = {**options, **overrides}
    sampler = body.sampler_name or body.sampler_index or "Euler"
    fields = dict(
        prompt=body.prompt, negative_prompt=body.negative_prompt, sampler_name=sampler,
        scheduler=body.scheduler or "Automatic", steps=body.steps, cfg_scale=body.cfg_scale, width=body.width,
        height=body.height, seed=body.seed, batch_size=body.batch_size, n_iter=body.n_iter,
        subseed=body.subseed, subseed_strength=body.subseed_strength, tiling=bool(body.tiling),
        styles=tuple(body.styles or ()),
        seed_resize_from_w=max(0, body.seed_resize_from_w), seed_resize_from_h=max(0, body.seed_resize_from_h),
        checkpoint=overrides.get("sd_model_checkpoint") or None, vae=settings.get("sd_vae") or "Automatic",
        save_images=bool(body.save_images),
        # A1111 takes these from its options (s_* whatever the request's own fields say); eta from the request
        **{**option_fields(settings, sampler), **_eta(body)},
    )
    if isinstance(body, Img2ImgBody):
        fields.update(_img2img_fields(body, limits), script=script)
    elif body.enable_hr:
        fields.update(_hires_fields(body))
    return GenerationRequest(**fields), _warnings(body, overrides)


def _hires_fields(body: Txt2ImgBody) -> dict:
    return dict(enable_hr=True, hr_scale=body.hr_scale, hr_upscaler=body.hr_upscaler,
                hr_second_pass_steps=body.hr_second_pass_steps, hr_resize_x=body.hr_resize_x,
                hr_resize_y=body.hr_resize_y, hr_sampler_name=body.hr_sampler_name or None,
                hr_scheduler=body.hr_scheduler or None, hr_prompt=body.hr_prompt or "",
                hr_negative_prompt=body.hr_negative_prompt or "",
                hr_checkpoint=None if body.hr_checkpoint_name in (None, "", SAME_CHECKPOINT) else body.hr_checkpoint_name,
                denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength)


def _eta(body: Txt2ImgBody) -> dict:
    """The request's own eta, when it gives one (else the options' applies)."""
    given = (body.model_extra or {}).get("eta")
    if given is None:
        return {}
    if isinstance(given, bool) or not isinstance(given, (int, float)):
        raise InvalidRequest("eta", f"expected a number, got {given!r}")
    return {"eta": float(given)}


def _warnings(body: Txt2ImgBody, overrides: dict) -> list[str]:
    given = body.model_dump()
    ignored = [name for name, is_set in UNIMPLEMENTED_FIELDS.items() if name in given and is_set(given[name])]
    warnings = [f"not implemented yet, had no effect: {', '.join(ignored)}"] if ignored else []
    from_options = [name for name in OPTION_FIELDS if given.get(name) is not None]
    if from_options:
        warnings.append(f"{', '.join(from_options)}: as in A1111, these come from the options (POST /options or "
                        "override_settings), not from the request")
    inactive = sorted(k for k in overrides if k not in IMPLEMENTED)
    if inactive:
        warnings.append(f"override_settings not implemented yet, had no effect: {', '.join(inactive)}")
    return warnings


def _img2img_fields(body: Img2ImgBody, limits: Limits) -> dict:
    if not body.init_images:
        raise InvalidRequest("init_images", "at least one image is required")
    init = decode_b64_image(body.init_images[0], "init_images", limits.max_upload_pixels)
    if body.resize_mode not in range(4):
        raise InvalidRequest("resize_mode", f"must be 0..3, got {body.resize_mode}")
    if body.inpainting_fill not in range(4):
        raise InvalidRequest("inpainting_fill", f"must be 0..3, got {body.inpainting_fill}")
    fields = dict(init_image=init, denoising_strength=body.denoising_strength,
                  resize_mode=ResizeMode(body.resize_mode))
    if body.mask:
        fields.update(
            mask=decode_b64_image(body.mask, "mask", limits.max_upload_pixels),
            mask_blur=body.mask_blur if body.mask_blur is not None else body.mask_blur_x,
            mask_blur_x=body.mask_blur if body.mask_blur is not None else body.mask_blur_x,
            mask_blur_y=body.mask_blur if body.mask_blur is not None else body.mask_blur_y,
            inpainting_fill=MaskedContent(body.inpainting_fill), inpaint_full_res=bool(body.inpaint_full_res),
            inpaint_full_res_padding=body.inpaint_full_res_padding,
            inpainting_mask_invert=bool(body.inpainting_mask_invert))
    return fields


def to_response(body: Txt2ImgBody, req: GenerationRequest, result: GenerationResult, return_grid: bool) -> dict:
    images, infotexts = list(result.images), list(result.infotexts)
    first = 0
    if return_grid and result.grid is not None:
        images.insert(0, result.grid)
        infotexts.insert(0, result.infotexts[0])
        first = 1
    encoded = [encode_png(img, text) for img, text in zip(images, infotexts, strict=True)] if body.send_images else []
    if isinstance(body, Img2ImgBody) and body.include_init_images:
        encoded += body.init_images
    parameters = body.model_dump()
    if isinstance(body, Img2ImgBody):
        parameters.update(init_images=None, mask=None)
    return {"images": encoded, "parameters": parameters, "info": json.dumps(_info(req, result, first, infotexts))}


def _info(req: GenerationRequest, result: GenerationResult, first: int, infotexts: list[str]) -> dict:
    checkpoint = result.checkpoint
    count = len(result.seeds)
    return {
        "prompt": req.prompt, "all_prompts": [req.prompt] * count,
        "negative_prompt": req.negative_prompt, "all_negative_prompts": [req.negative_prompt] * count,
        "seed": result.seeds[0] if result.seeds else req.seed, "all_seeds": result.seeds,
        "subseed": result.request.subseed, "subseed_strength": req.subseed_strength,
        "all_subseeds": [result.request.subseed + (seed - result.request.seed) for seed in result.seeds],
        "seed_resize_from_w": req.seed_resize_from_w or -1, "seed_resize_from_h": req.seed_resize_from_h or -1,
        "width": req.width, "height": req.height,
        "sampler_name": result.sampler.sampler.name if result.sampler else req.sampler_name,
        "scheduler": result.sampler.schedule if result.sampler else req.scheduler,
        "cfg_scale": req.cfg_scale, "steps": req.steps, "batch_size": req.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": checkpoint.model_name if checkpoint else None,
        "sd_model_hash": checkpoint.short_hash if checkpoint else None,
        "denoising_strength": req.denoising_strength if req.kind == "img2img" or req.enable_hr else 0,
        "clip_skip": req.clip_skip, "extra_generation_params": {},
        "index_of_first_image": first, "infotexts": infotexts, "styles": [],
        "job_timestamp": result.job_timestamp, "is_using_inpainting_conditioning": False,
        "interrupted": result.interrupted, "warnings": result.warnings, "version": VERSION,
    }
