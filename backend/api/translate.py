"""API bodies -> backend requests, and results -> A1111 response shapes."""

from __future__ import annotations

import json
from collections.abc import Callable

from backend.api.images import decode_b64_image, encode_png
from backend.api.models import Img2ImgBody, Txt2ImgBody
from backend.control import units as control_units
from backend.errors import InvalidRequest
from backend.generation.requests import SAME_CHECKPOINT, GenerationRequest, MaskedContent, ResizeMode
from backend.options import request_fields as option_fields
from backend.outputs import ImageFormat
from backend.generation.parameters import VERSION
from backend.generation.results import GenerationResult
from backend.settings import Limits


# A1111 1.10 request fields with no effect here yet. A request that gives one a value other than "off" is refused
# with a 422 naming it, never answered with a 200 that pretends. (value -> is it off?)
REFUSED_FIELDS = {
    "restore_faces": (lambda v: not v, "face restoration needs GFPGAN/CodeFormer weights, which cannot be "
                                       "downloaded here (GET /sdapi/v1/face-restorers is empty)"),
    "latent_mask": (lambda v: not v, "a separate latent mask is not implemented yet"),
    "alwayson_scripts": (lambda v: not v or (isinstance(v, dict) and set(map(str.lower, map(str, v))) <= {
        "controlnet"}), "the only always-on script here is ControlNet"),
}
# A1111 fields read by _own_fields, and those that A1111's own API overrides or that never change an image.
HARMLESS_FIELDS = ("infotext", "firstpass_image", "refiner_checkpoint", "refiner_switch_at", "s_min_uncond",
                   "initial_noise_multiplier", "disable_extra_networks", "mask_round", "do_not_save_samples",
                   "do_not_save_grid", "comments", "force_task_id", "firstphase_width", "firstphase_height",
                   "image_cfg_scale", "sampler_index", "script_args", "script_name", "send_images", "save_images",
                   "user")
# The sampler's sigma options: the request's value, unless the option differs from the sampler's default (then
# the option's), as A1111's Sampler.initialize decides. (name, default; s_tmax 0 = infinity)
SIGMA_FIELDS = (("s_churn", 0.0), ("s_tmin", 0.0), ("s_tmax", 0.0), ("s_noise", 1.0))


def to_request(body: Txt2ImgBody, options: dict, overrides: dict, limits: Limits,
               find_script: Callable[[str, list, str], object]) -> tuple[GenerationRequest, list]:
    """The body with the current options and this request's (checked) override_settings -> a request, and
    warnings about what it asked for that has no effect. `find_script(script_name, script_args, tab)` gives the
    script (an unknown one is an error, as in A1111)."""
    given = body.model_dump()  # declared fields and the extra keys A1111 also knows
    refuse_unimplemented(given)
    extra = body.model_extra or {}
    script = None
    if extra.get("script_name"):
        args = extra.get("script_args") or []
        if not isinstance(args, list):
            raise InvalidRequest("script_args", "expected a list, in the order of the script's controls")
        script = find_script(str(extra["script_name"]), args, "img2img" if isinstance(body, Img2ImgBody) else "txt2img")
    settings = {**options, **overrides}
    sampler = body.sampler_name or body.sampler_index or "Euler"
    fields = dict(
        prompt=body.prompt, negative_prompt=body.negative_prompt, sampler_name=sampler,
        scheduler=body.scheduler or "Automatic", steps=body.steps, cfg_scale=body.cfg_scale, width=body.width,
        height=body.height, seed=body.seed, batch_size=body.batch_size, n_iter=body.n_iter,
        subseed=body.subseed, subseed_strength=body.subseed_strength,
        styles=tuple(body.styles or ()),
        seed_resize_from_w=max(0, body.seed_resize_from_w), seed_resize_from_h=max(0, body.seed_resize_from_h),
        checkpoint=overrides.get("sd_model_checkpoint") or None, vae=settings.get("sd_vae") or "Automatic",
        save_images=bool(body.save_images), script=script, **_refiner_fields(given),
        **{**option_fields(settings), **_eta(given), **_sigma_fields(given, settings)},
    )
    if body.tiling is not None:  # else the `tiling` option's
        fields["tiling"] = bool(body.tiling)
    fields.update(_own_fields(given, isinstance(body, Img2ImgBody)))
    fields.update(_control_fields(given, settings, limits))
    if isinstance(body, Img2ImgBody):
        fields.update(_img2img_fields(body, limits))
    elif body.enable_hr:
        fields.update(_hires_fields(body))
    if not isinstance(body, Img2ImgBody) and given.get("firstpass_image"):  # A1111 1.10's txt2img field
        fields["firstpass_image"] = decode_b64_image(str(given["firstpass_image"]), "firstpass_image",
                                                     limits.max_upload_pixels)
    return GenerationRequest(**fields), _warnings(body)


def _hires_fields(body: Txt2ImgBody) -> dict:
    return dict(enable_hr=True, hr_scale=body.hr_scale, hr_upscaler=body.hr_upscaler,
                hr_second_pass_steps=body.hr_second_pass_steps, hr_resize_x=body.hr_resize_x,
                hr_resize_y=body.hr_resize_y, hr_sampler_name=body.hr_sampler_name or None,
                hr_scheduler=body.hr_scheduler or None, hr_prompt=body.hr_prompt or "",
                hr_negative_prompt=body.hr_negative_prompt or "",
                hr_checkpoint=None if body.hr_checkpoint_name in (None, "", SAME_CHECKPOINT) else body.hr_checkpoint_name,
                denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength)


def _refiner_fields(given: dict) -> dict:
    """A1111's refiner fields ("None" or empty: no refiner)."""
    name = given.get("refiner_checkpoint")
    if name in (None, "", "None"):
        return {}
    if not isinstance(name, str):
        raise InvalidRequest("refiner_checkpoint", f"expected a checkpoint name, got {name!r}")
    switch_at = given.get("refiner_switch_at")
    return {"refiner_checkpoint": name,
            "refiner_switch_at": None if switch_at is None else _number("refiner_switch_at", switch_at)}


def _number(name: str, value) -> float:
    """An extra (undeclared) A1111 field's number; JSON true/false is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(name, f"expected a number, got {value!r}")
    return float(value)


def _eta(given: dict) -> dict:
    """The request's own eta, when it gives one (else the options' applies)."""
    return {} if given.get("eta") is None else {"eta": _number("eta", given["eta"])}


def refuse_unimplemented(given: dict) -> None:
    """A 422 for the first A1111 field set to something this project cannot do yet."""
    for name, (is_off, why) in REFUSED_FIELDS.items():
        if name in given and not is_off(given[name]):
            if name == "alwayson_scripts" and isinstance(given[name], dict):
                others = [str(k)[:60] for k in given[name] if str(k).lower() != "controlnet"]
                why = f"{why} (asked for: {', '.join(others)})"
            raise InvalidRequest(name, why)


def _own_fields(given: dict, img2img: bool) -> dict:
    """A1111 fields that take the option's value when the request leaves them out (None)."""
    fields = {}
    for name, kind in (("s_min_uncond", float), ("initial_noise_multiplier", float),
                       ("disable_extra_networks", bool), ("mask_round", bool)):
        value = given.get(name)
        if value is None:
            continue
        if kind is bool and not isinstance(value, bool):
            raise InvalidRequest(name, f"expected true or false, got {value!r}")
        fields[name] = _number(name, value) if kind is float else value
    if not img2img:
        fields.pop("initial_noise_multiplier", None)  # A1111 applies it to img2img only
    return fields


def _control_fields(given: dict, settings: dict, limits: Limits) -> dict:
    """`alwayson_scripts.controlnet.args`: the extension's units (enabled ones run)."""
    scripts = given.get("alwayson_scripts") or {}
    entry = next((v for k, v in scripts.items() if str(k).lower() == "controlnet"), None) \
        if isinstance(scripts, dict) else None
    if entry is None:
        return {}
    args = entry.get("args") if isinstance(entry, dict) else None
    if not isinstance(args, list):
        raise InvalidRequest("alwayson_scripts.controlnet.args", "expected a list of ControlNet units")
    most = max(1, int(settings.get("control_net_unit_count", 3)))
    if len(args) > most:
        raise InvalidRequest("alwayson_scripts.controlnet.args", f"{len(args)} units given, at most {most} "
                                                                 "(the control_net_unit_count option)")

    def decode(value, field: str):
        return decode_b64_image(value, field, limits.max_upload_pixels)

    units = []
    for index, unit in enumerate(args):
        field = f"controlnet.args[{index}]"
        if not isinstance(unit, dict):
            raise InvalidRequest(field, "expected a unit object with the extension's fields")
        parsed = control_units.from_fields(unit, field, decode)
        if parsed is not None:
            units.append(parsed)
    return {"control_units": tuple(units), "control_subseed": given.get("subseed", -1)} if units else {}


def _sigma_fields(given: dict, settings: dict) -> dict:
    fields = {}
    for name, default in SIGMA_FIELDS:
        option, value = settings.get(name, default), given.get(name)
        fields[name] = float(option) if option != default or value is None else _number(name, value)
    return fields


def _warnings(body: Txt2ImgBody) -> list[str]:
    """Keys that are neither A1111's nor ours: kept in `parameters`, named here (A1111 ignores them too)."""
    known = set(type(body).model_fields) | set(REFUSED_FIELDS) | set(HARMLESS_FIELDS) | {"eta"} | \
        {name for name, _ in SIGMA_FIELDS}
    unknown = sorted(str(k)[:60] for k in (body.model_extra or {}) if k not in known)
    return [f"unknown fields, not used: {', '.join(unknown)}"] if unknown else []


def _img2img_fields(body: Img2ImgBody, limits: Limits) -> dict:
    if not body.init_images:
        raise InvalidRequest("init_images", "at least one image is required")
    init = decode_b64_image(body.init_images[0], "init_images", limits.max_upload_pixels)
    more = tuple(decode_b64_image(item, f"init_images.{i + 1}", limits.max_upload_pixels)
                 for i, item in enumerate(body.init_images[1:]))
    if len(more) >= body.batch_size:  # A1111: the list becomes the batch, up to the batch size
        raise InvalidRequest("init_images", f"bad number of images passed: {len(more) + 1}; expecting "
                                            f"{body.batch_size} or less")
    if body.resize_mode not in range(4):
        raise InvalidRequest("resize_mode", f"must be 0..3, got {body.resize_mode}")
    if body.inpainting_fill not in range(4):
        raise InvalidRequest("inpainting_fill", f"must be 0..3, got {body.inpainting_fill}")
    fields = dict(init_image=init, denoising_strength=body.denoising_strength,
                  resize_mode=ResizeMode(body.resize_mode))
    if more:
        fields.update(more_init_images=more, batch_size=len(more) + 1)
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


def to_response(body: Txt2ImgBody, req: GenerationRequest, result: GenerationResult, return_grid: bool,
                fmt: ImageFormat = ImageFormat()) -> dict:
    """A1111's answer: the images (with the grid first only when A1111 makes one for the API: save_images, the
    return_grid option, several images), the request as `parameters` (init images and mask only with
    include_init_images), and the info JSON."""
    images, infotexts = list(result.images), list(result.infotexts)
    first = 0
    if body.save_images and return_grid and result.grid is not None:
        images.insert(0, result.grid)
        infotexts.insert(0, result.infotexts[0])
        first = 1
    encoded = [encode_png(img, text, fmt) for img, text in zip(images, infotexts, strict=True)] if body.send_images \
        else []
    if body.send_images:  # the ControlNet units' detected maps follow the images, as the extension sends them
        encoded += [encode_png(image, None, fmt) for image in result.control_maps]
    parameters = body.model_dump()
    if isinstance(body, Img2ImgBody) and not body.include_init_images:
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
