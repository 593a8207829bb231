"""What a user asks for, checked early: a bad value raises InvalidRequest naming the field."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import IntEnum

import torch
from PIL import Image, ImageColor

from backend.checks import check_int, check_number
from backend.errors import InvalidRequest
from backend.samplers import UNIPC_SKIP_TYPES, UNIPC_VARIANTS, UniPCSettings
from backend.settings import Limits

MAX_SEED = 2**32 - 1
EMPHASIS_MODES = ("Original", "No norm", "None")
SAME_CHECKPOINT = "Use same checkpoint"  # A1111's hr_checkpoint_name for "no other model"
REFINER_PASSES = ("first pass", "second pass", "both passes")


class ResizeMode(IntEnum):
    JUST_RESIZE = 0
    CROP_AND_RESIZE = 1
    RESIZE_AND_FILL = 2
    LATENT_UPSCALE = 3


class MaskedContent(IntEnum):
    FILL = 0
    ORIGINAL = 1
    LATENT_NOISE = 2
    LATENT_NOTHING = 3


MASKED_CONTENT_LABELS = {MaskedContent.FILL: "fill", MaskedContent.ORIGINAL: "original",
                         MaskedContent.LATENT_NOISE: "latent noise", MaskedContent.LATENT_NOTHING: "latent nothing"}


@dataclass
class GenerationRequest:
    """txt2img when `init_image` is None; img2img with it; inpainting with `mask` too."""

    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1  # variation seed (-1 = random), blended in with subseed_strength
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0  # "Seed resize from": draw the noise as for this size (0 = off)
    seed_resize_from_h: int = 0
    eta_noise_seed_delta: int = 0  # A1111's ENSD option: reseeds ancestral samplers' extra noise
    tiling: bool = False  # seamless: circular padding in every convolution of the UNet and the VAE
    eta: float | None = None  # the request's own noise multiplier of ancestral/SDE samplers and DDIM; None:
    eta_ancestral: float = 1.0  # ... A1111's options, by the kind of the sampler that runs (hires may differ)
    eta_ddim: float = 0.0
    rng_source: str = "CPU"  # A1111's randn_source: CPU | GPU | NV
    s_churn: float = 0.0  # A1111's sigma churn options (Euler, Heun, DPM2); s_noise also for ancestral/SDE
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0 = infinity
    s_noise: float = 1.0
    s_min_uncond: float = 0.0  # A1111's "Negative Guidance minimum sigma": below it, odd steps skip the uncond
    s_min_uncond_all: bool = False  # ... every step, not only odd ones (option s_min_uncond_all)
    initial_noise_multiplier: float = 1.0  # img2img: the starting noise is scaled by this (A1111's option)
    disable_extra_networks: bool = False  # <lora:...> tags are removed from the prompt but not applied
    mask_round: bool = True  # inpainting: the latent mask is rounded to 0/1 (False: a soft, blurred mask)
    token_merging_ratio: float = 0.0  # A1111's token merging options (ToMe): the base ratio, ...
    token_merging_ratio_hr: float = 0.0  # ... hires fix's second pass (0: the base one), ...
    token_merging_ratio_img2img: float = 0.0  # ... img2img's (0: the base one)
    pad_conds: str = ""  # prompt and negative of different lengths: "v0" / "pad" make them one length (options)
    batch_cond_uncond: bool = True  # the uncond and the conds in one UNet batch (A1111's option)
    unipc: UniPCSettings = UniPCSettings()  # A1111's uni_pc_* options
    network_hashes: tuple[tuple[str, str], ...] = ()  # (name, short hash) from a pasted infotext's `Lora hashes`
    styles: tuple[str, ...] = ()  # names from styles.csv, merged into the prompts when the job is submitted
    # hires fix (txt2img)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_upscaler: str | None = None  # None: "Latent", and no `Hires upscaler` in the infotext (A1111)
    hr_second_pass_steps: int = 0  # 0 = same as steps
    hr_sampler_name: str | None = None  # None: the first pass's
    hr_scheduler: str | None = None
    hr_prompt: str = ""  # "": the first pass's
    hr_negative_prompt: str = ""
    hr_checkpoint: str | None = None  # the second pass's model (title or name); None: the first pass's
    # SDXL refiner (any checkpoint): it takes over when (999 - t) / 1000 reaches `refiner_switch_at` (None: at once)
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    hires_refiner_pass: str = "second pass"  # A1111's hires_fix_refiner_pass: first pass | second pass | both passes
    batch_size: int = 1
    n_iter: int = 1
    checkpoint: str | None = None  # title or name; None = the current model
    vae: str | None = None  # None/"Automatic" = sidecar or built-in; "None" = built-in; else a VAE name
    img2img_upscaler: str | None = None  # A1111's upscaler_for_img2img option: enlarges init pictures
    img2img_background: str = "#ffffff"  # A1111's img2img_background_color: what shows through transparency
    inpainting_mask_weight: float = 1.0  # A1111's option: how much an inpainting model's picture is masked
    img2img_fix_steps: bool = False  # A1111's option: img2img runs exactly `steps` (of a longer schedule)
    img2img_extra_noise: float = 0.0  # A1111's option: extra starting noise for img2img and hires fix
    skip_early_cond: float = 0.0  # A1111's option: the first part of sampling runs without the negative prompt
    discard_penultimate_sigma: bool = False  # A1111's always_discard_next_to_last_sigma, for every sampler
    sgm_noise_multiplier: bool = False  # A1111's option: txt2img's k-diffusion noise scaled as SGM's code does
    # A1111's sigma_min, sigma_max and rho options for the Karras, Exponential and SGM Uniform schedules (0: own)
    schedule_sigma_min: float = 0.0
    schedule_sigma_max: float = 0.0
    schedule_rho: float = 0.0
    refiner_aesthetic_scores: tuple[float, float] = (2.5, 6.0)  # SDXL refiner's (negative, positive) scores
    clip_skip: int = 1
    emphasis: str = "Original"  # A1111's emphasis option: Original | No norm | None
    save_images: bool = True
    # img2img / inpainting
    init_image: Image.Image | None = None
    more_init_images: tuple[Image.Image, ...] = ()  # A1111's init_images after the first: picture i starts image i
    firstpass_image: Image.Image | None = None  # txt2img with hires fix: this picture stands in for the first pass
    denoising_strength: float = 0.75
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    mask: Image.Image | None = None
    mask_blur: int = 4
    mask_blur_x: int | None = None  # A1111's separate blurs along rows / columns; None = mask_blur
    mask_blur_y: int | None = None
    latent_mask: Image.Image | None = None  # A1111's p.latent_mask (scripts): what is repainted in latent space
    # and filled, where `mask` (blurred) only decides what is pasted back
    inpainting_fill: MaskedContent = MaskedContent.ORIGINAL
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    script: object | None = None  # an img2img script (backend/scripts.ScriptRun): Poor man's outpainting, ...
    control_units: tuple = ()  # ControlNet units (backend/control/units.ControlUnit), enabled ones only
    control_subseed: int = -1  # the variation seed as asked (before -1 was resolved): ControlNet's numpy seed
    extra_params: tuple[tuple[str, object], ...] = ()  # infotext keys a script adds (A1111's extra_generation_params)

    def tome_ratio(self, hires: bool = False) -> float:
        """The token merging ratio of a sampling pass, as A1111's get_token_merging_ratio."""
        if hires:
            return self.token_merging_ratio_hr or self.token_merging_ratio
        if self.kind == "img2img":
            return self.token_merging_ratio_img2img or self.token_merging_ratio
        return self.token_merging_ratio

    def eta_for(self, ddim: bool) -> float:
        """The eta a sampler runs with: the request's own, else the option of the sampler's kind (A1111)."""
        if self.eta is not None:
            return self.eta
        return self.eta_ddim if ddim else self.eta_ancestral

    @property
    def init_images(self) -> list[Image.Image]:
        return [] if self.init_image is None else [self.init_image, *self.more_init_images]

    @property
    def kind(self) -> str:
        return "txt2img" if self.init_image is None else "img2img"

    @property
    def is_inpainting(self) -> bool:
        return self.mask is not None

    @property
    def mask_blurs(self) -> tuple[int, int]:
        return (self.mask_blur if self.mask_blur_x is None else self.mask_blur_x,
                self.mask_blur if self.mask_blur_y is None else self.mask_blur_y)


def validate(req: GenerationRequest, limits: Limits) -> None:
    for name in ("prompt", "negative_prompt"):
        _check_text(getattr(req, name), name, limits.max_prompt_chars)
    check_int(req.steps, "steps", 1, limits.max_steps)
    check_number(req.cfg_scale, "cfg_scale", 0.0, 30.0)
    for name, value, maximum in (("width", req.width, limits.max_width), ("height", req.height, limits.max_height)):
        check_int(value, name, 64, maximum)
        if value % 8:
            raise InvalidRequest(name, f"must be a multiple of 8, got {value}")
    check_int(req.batch_size, "batch_size", 1, limits.max_batch_size)
    check_int(req.n_iter, "n_iter", 1, limits.max_batch_count)
    check_int(req.seed, "seed", -1, MAX_SEED)
    check_int(req.subseed, "subseed", -1, MAX_SEED)
    check_number(req.subseed_strength, "subseed_strength", 0.0, 1.0)
    check_int(req.seed_resize_from_w, "seed_resize_from_w", -1, limits.max_width)
    check_int(req.seed_resize_from_h, "seed_resize_from_h", -1, limits.max_height)
    check_int(req.eta_noise_seed_delta, "eta_noise_seed_delta", 0, MAX_SEED)
    if req.rng_source not in ("CPU", "GPU", "NV"):
        raise InvalidRequest("randn_source", f"must be CPU, GPU or NV, got {req.rng_source!r}")
    if req.rng_source == "GPU" and not torch.cuda.is_available():
        raise InvalidRequest("randn_source", "GPU noise needs CUDA, which this machine lacks; NV gives the same "
                                             "numbers on any machine")
    if req.eta is not None:
        check_number(req.eta, "eta", 0.0, 10.0)
    check_number(req.eta_ancestral, "eta_ancestral", 0.0, 10.0)
    check_number(req.eta_ddim, "eta_ddim", 0.0, 10.0)
    for name in ("s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond"):
        check_number(getattr(req, name), name, 0.0, 1000.0)
    check_number(req.initial_noise_multiplier, "initial_noise_multiplier", 0.0, 10.0)
    for name in ("token_merging_ratio", "token_merging_ratio_hr", "token_merging_ratio_img2img"):
        check_number(getattr(req, name), name, 0.0, 0.9)
    if req.pad_conds not in ("", "pad", "v0"):
        raise InvalidRequest("pad_cond_uncond", f"must be '', 'pad' or 'v0', got {req.pad_conds!r}")
    _check_unipc(req.unipc)
    check_int(req.clip_skip, "clip_skip", 1, 12)
    if req.refiner_switch_at is not None:
        check_number(req.refiner_switch_at, "refiner_switch_at", 0.0, 1.0)
    if req.hires_refiner_pass not in REFINER_PASSES:
        raise InvalidRequest("hires_fix_refiner_pass", f"must be one of {', '.join(REFINER_PASSES)}, got "
                                                       f"{req.hires_refiner_pass!r}")
    if req.emphasis not in EMPHASIS_MODES:
        raise InvalidRequest("emphasis", f"must be one of {', '.join(EMPHASIS_MODES)}, got {req.emphasis!r}")
    if req.firstpass_image is not None and (not req.enable_hr or req.init_image is not None):
        raise InvalidRequest("firstpass_image", "a first-pass picture is used by txt2img's hires fix only: set "
                                                "enable_hr")
    if req.more_init_images:
        _check_init_images(req)
    for name, image in (("init_image", req.init_image), *(("init_images", i) for i in req.more_init_images),
                        ("mask", req.mask), ("firstpass_image", req.firstpass_image)):
        if image is not None and image.width * image.height > limits.max_upload_pixels:
            raise InvalidRequest(name, f"image is {image.width}x{image.height}, larger than the configured maximum "
                                       f"of {limits.max_upload_pixels} pixels")
    if req.mask is not None and req.init_image is None:
        raise InvalidRequest("init_image", "inpainting needs an image to paint on")
    if req.enable_hr and req.init_image is None:
        _check_hires(req, limits)
    if req.init_image is not None:
        check_number(req.denoising_strength, "denoising_strength", 0.0, 1.0)
        check_int(int(req.resize_mode), "resize_mode", 0, 3)
        _check_colour(req.img2img_background, "img2img_background_color")
        if req.img2img_fix_steps:
            _check_schedule(exact_steps_schedule(req.steps, req.denoising_strength)[0], req, limits, "img2img")
    check_number(req.inpainting_mask_weight, "inpainting_mask_weight", 0.0, 1.0)
    check_number(req.img2img_extra_noise, "img2img_extra_noise", 0.0, 1.0)
    check_number(req.skip_early_cond, "skip_early_cond", 0.0, 1.0)
    for name, value in (("sigma_min", req.schedule_sigma_min), ("sigma_max", req.schedule_sigma_max)):
        check_number(value, name, 0.0, 1000.0)
    check_number(req.schedule_rho, "rho", 0.0, 100.0)
    if 0 < req.schedule_sigma_max <= req.schedule_sigma_min:
        raise InvalidRequest("sigma_max", f"must be above sigma_min ({req.schedule_sigma_min})")
    for name, score in zip(("sdxl_refiner_low_aesthetic_score", "sdxl_refiner_high_aesthetic_score"),
                           req.refiner_aesthetic_scores, strict=True):
        check_number(score, name, 0.0, 10.0)
    if req.mask is not None:
        check_int(req.mask_blur, "mask_blur", 0, 64)
        for name in ("mask_blur_x", "mask_blur_y"):
            if getattr(req, name) is not None:
                check_int(getattr(req, name), name, 0, 256)
        check_int(req.inpaint_full_res_padding, "inpaint_full_res_padding", 0, 256)
        check_int(int(req.inpainting_fill), "inpainting_fill", 0, 3)


def _check_colour(value, name: str) -> None:
    try:
        ImageColor.getrgb(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidRequest(name, f"not a colour: {str(value)[:40]!r} (e.g. #ffffff)") from None


def _check_init_images(req: GenerationRequest) -> None:
    """Several init images make one batch, a picture per image (A1111's img2img); with a mask or a script that
    is not supported here."""
    if req.mask is not None or req.script is not None:
        raise InvalidRequest("init_images", "several init images work for plain img2img only here (not with a "
                                            "mask or a script): send one request per picture")
    if len(req.init_images) != req.batch_size:
        raise InvalidRequest("init_images", f"bad number of images passed: {len(req.init_images)}; the batch size "
                                            f"is {req.batch_size}")


def _check_text(value, name: str, max_chars: int) -> None:
    if not isinstance(value, str):
        raise InvalidRequest(name, f"must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise InvalidRequest(name, f"is {len(value)} characters long; the limit is {max_chars} "
                                   "(set by --max-prompt-chunks)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidRequest(name, "contains characters that are not valid Unicode (a lone surrogate)") from err


def _check_schedule(schedule: int, req: GenerationRequest, limits: Limits, what: str) -> None:
    if schedule > limits.max_schedule_steps:
        raise InvalidRequest("denoising_strength", f"{req.denoising_strength} makes {what} build a schedule of "
                                                   f"{schedule} steps (steps / denoising strength); the limit is "
                                                   f"{limits.max_schedule_steps}")


def _check_hires(req: GenerationRequest, limits: Limits) -> None:
    check_number(req.hr_scale, "hr_scale", 1.0, 8.0)
    check_number(req.denoising_strength, "denoising_strength", 0.0, 1.0)
    check_int(req.hr_second_pass_steps, "hr_second_pass_steps", 0, limits.max_steps)
    check_int(req.hr_resize_x, "hr_resize_x", 0, limits.max_width)
    check_int(req.hr_resize_y, "hr_resize_y", 0, limits.max_height)
    _check_schedule(hires_schedule(req)[0], req, limits, "hires fix")
    to = hires_target(req)
    if to.width > limits.max_width or to.height > limits.max_height:
        raise InvalidRequest("hr_scale", f"the hires size {to.width}x{to.height} is larger than the configured "
                                         f"maximum of {limits.max_width}x{limits.max_height}")
    for name in ("hr_prompt", "hr_negative_prompt"):
        _check_text(getattr(req, name), name, limits.max_prompt_chars)


def check_prompt_chunks(chunks: int, name: str, max_chunks: int) -> None:
    if chunks > max_chunks:
        raise InvalidRequest(name, f"is {chunks} chunks of 75 tokens long; the limit is {max_chunks} "
                                   "(set by --max-prompt-chunks)")


def resolve_seed(seed: int, rng: random.Random | None = None) -> int:
    """-1 means random, as in A1111."""
    if seed == -1:
        return (rng or random.SystemRandom()).randrange(0, MAX_SEED)
    return seed


def _check_unipc(settings: UniPCSettings) -> None:
    if settings.variant not in UNIPC_VARIANTS:
        raise InvalidRequest("uni_pc_variant", f"must be bh1 or bh2 (vary_coeff is not implemented), got "
                                               f"{settings.variant!r}")
    if settings.skip_type not in UNIPC_SKIP_TYPES:
        raise InvalidRequest("uni_pc_skip_type", f"must be time_uniform, time_quadratic or logSNR, got "
                                                 f"{settings.skip_type!r}")
    check_int(settings.order, "uni_pc_order", 1, 50)


# ------------------------------------------------------------------ hires fix, from the request alone

@dataclass(frozen=True)
class HiresTarget:
    width: int  # what the first pass is upscaled to
    height: int
    truncate_x: int = 0  # latent columns/rows cropped to fit the requested box (hr_resize_x/y both given)
    truncate_y: int = 0

    @property
    def final_size(self) -> tuple[int, int]:
        """The image's size: the upscaled latents (size // 8) less the cropped columns and rows."""
        return (self.width // 8 - self.truncate_x) * 8, (self.height // 8 - self.truncate_y) * 8


def hires_target(req: GenerationRequest) -> HiresTarget:
    """A1111's calculate_target_resolution: the size hires fix upscales the first pass to."""
    w, h, rx, ry = req.width, req.height, req.hr_resize_x, req.hr_resize_y
    if rx == 0 and ry == 0:
        return HiresTarget(int(w * req.hr_scale), int(h * req.hr_scale))
    if ry == 0:
        return HiresTarget(rx, rx * h // w)
    if rx == 0:
        return HiresTarget(ry * w // h, ry)
    if w / h < rx / ry:
        up_x, up_y = rx, rx * h // w
    else:
        up_x, up_y = ry * w // h, ry
    return HiresTarget(up_x, up_y, (up_x - rx) // 8, (up_y - ry) // 8)


def hires_schedule(req: GenerationRequest) -> tuple[int, int]:
    """(steps of the whole schedule, steps that run): K = hr_second_pass_steps or steps; int(K / min(d, .999))."""
    return exact_steps_schedule(req.hr_second_pass_steps or req.steps, req.denoising_strength)


def exact_steps_schedule(steps: int, strength: float) -> tuple[int, int]:
    """A1111's setup_img2img_steps when the steps are given (hires fix, or img2img with img2img_fix_steps):
    a schedule of int(K / min(d, .999)) steps of which the last K run."""
    return (int(steps / min(strength, 0.999)) if strength > 0 else 0), steps
