"""A1111 1.10's `infotext` request field: the generation parameters of an image fill the fields the request did
not set itself, and name options for override_settings (those the request's override_settings do not name).
Keys that set nothing here are reported back, never acted on."""

from __future__ import annotations

from backend import infotext
from backend.errors import InvalidRequest

MAX_INFOTEXT_CHARS = 100_000


def _flag(value) -> bool:
    return str(value).strip().lower() == "true"


# infotext key -> (request field, cast), for both tabs (A1111's paste fields with an `api` name)
COMMON_FIELDS = {
    "Prompt": ("prompt", str), "Negative prompt": ("negative_prompt", str), "Steps": ("steps", int),
    "Sampler": ("sampler_name", str), "Schedule type": ("scheduler", str), "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int), "Size-1": ("width", int), "Size-2": ("height", int), "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float), "Seed resize from-1": ("seed_resize_from_w", int),
    "Seed resize from-2": ("seed_resize_from_h", int), "Denoising strength": ("denoising_strength", float),
    "Refiner": ("refiner_checkpoint", str), "Refiner switch at": ("refiner_switch_at", float),
}
TXT2IMG_FIELDS = {
    "Hires upscale": ("hr_scale", float), "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str), "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int), "Hires checkpoint": ("hr_checkpoint_name", str),
    "Hires sampler": ("hr_sampler_name", str), "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str), "Hires negative prompt": ("hr_negative_prompt", str),
}
IMG2IMG_FIELDS = {"Mask blur": ("mask_blur", int)}
# infotext key -> the A1111 option it names (A1111's OptionInfo.infotext)
OPTIONS = {
    "Clip skip": "CLIP_stop_at_last_layers", "ENSD": "eta_noise_seed_delta", "RNG": "randn_source",
    "Conditional mask weight": "inpainting_mask_weight",
    "NGMS": "s_min_uncond", "NGMS all steps": "s_min_uncond_all", "Eta": "eta_ancestral", "Eta DDIM": "eta_ddim",
    "Sigma churn": "s_churn", "Sigma tmin": "s_tmin", "Sigma tmax": "s_tmax", "Sigma noise": "s_noise",
    "Emphasis": "emphasis", "Noise multiplier": "initial_noise_multiplier", "UniPC variant": "uni_pc_variant",
    "UniPC skip type": "uni_pc_skip_type", "UniPC order": "uni_pc_order",
    "UniPC lower order final": "uni_pc_lower_order_final", "Token merging ratio": "token_merging_ratio",
    "Token merging ratio hr": "token_merging_ratio_hr", "Schedule min sigma": "sigma_min",
    "Schedule max sigma": "sigma_max", "Schedule rho": "rho", "Discard penultimate sigma":
    "always_discard_next_to_last_sigma", "SGM noise multiplier": "sgm_noise_multiplier",
    "Extra noise": "img2img_extra_noise", "Skip Early CFG": "skip_early_cond", "Pad conds": "pad_cond_uncond",
    "Pad conds v0": "pad_cond_uncond_v0",
    "Hires refiner": "hires_fix_refiner_pass",
}
# Keys that describe the image rather than set anything (A1111 reads none of them into a request either)
DESCRIPTIVE = {"Size", "Seed resize from", "Hires resize", "Model hash", "Model", "VAE hash", "VAE", "Version",
               "Lora hashes", "TI hashes", "Hypernet", "Hypernet hash", "Memory fallback", "Masked content",
               "Inpaint area", "Masked area padding", "Mask mode", "Tiling"}


def apply_infotext(given: dict, text: str, img2img: bool, option_defaults: dict) -> tuple[dict, dict, list[str]]:
    """(fields the infotext sets that `given` (the request's own keys) leaves unset, option overrides it names,
    keys that set nothing here). Values are cast as A1111 casts them; one that does not cast is an error."""
    if not isinstance(text, str) or len(text) > MAX_INFOTEXT_CHARS:
        raise InvalidRequest("infotext", f"expected generation parameters of at most {MAX_INFOTEXT_CHARS} characters")
    params = infotext.parse(text)
    mapping = {**COMMON_FIELDS, **(IMG2IMG_FIELDS if img2img else TXT2IMG_FIELDS)}
    fields = {}
    for key, (name, cast) in mapping.items():
        if key in params and name not in given:
            fields[name] = _cast(key, params[key], cast)
    if not img2img and "enable_hr" not in given:  # A1111's rule for turning hires fix on from an infotext
        fields["enable_hr"] = infotext.hires_enabled(params)
    overrides = {OPTIONS[key]: _cast(key, params[key], _option_cast(option_defaults.get(OPTIONS[key])))
                 for key in OPTIONS if key in params}
    unused = [key for key in params if key not in mapping and key not in OPTIONS and key not in DESCRIPTIVE
              and not key.endswith(("-1", "-2"))]
    return fields, overrides, unused


def _option_cast(default):
    if isinstance(default, bool):
        return _flag
    return type(default) if isinstance(default, (int, float)) else str


def _cast(key: str, value, cast):
    try:
        if cast is int:
            text = str(value).strip()
            return int(text) if text.lstrip("-").isdigit() else int(float(text))
        return cast(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest("infotext", f"'{key}: {str(value)[:40]}' is not a valid value") from None
