"""Request bodies of the A1111-compatible API. Unknown keys are accepted and ignored, as A1111 does."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _not_a_bool(value):
    """JSON true/false is not a number here (pydantic would take true as 1)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool), Field(allow_inf_nan=False)]


class Txt2ImgBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: Int = -1
    subseed: Int = -1
    subseed_strength: Float = 0.0
    seed_resize_from_h: Int = -1
    seed_resize_from_w: Int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: Int = 1
    n_iter: Int = 1
    steps: Int = 50
    cfg_scale: Float = 7.0
    width: Int = 512
    height: Int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    override_settings: dict | None = None
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    enable_hr: bool = False
    denoising_strength: Float | None = None
    hr_scale: Float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: Int = 0
    hr_resize_x: Int = 0
    hr_resize_y: Int = 0
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_checkpoint_name: str | None = None


class Img2ImgBody(Txt2ImgBody):
    init_images: list[str] = Field(default_factory=list)
    resize_mode: Int = 0
    denoising_strength: Float = 0.75
    mask: str | None = None
    mask_blur: Int | None = None
    mask_blur_x: Int = 4
    mask_blur_y: Int = 4
    inpainting_fill: Int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: Int = 0
    inpainting_mask_invert: Int = 0
    initial_noise_multiplier: Float | None = None
    include_init_images: bool = False


class PngInfoBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: str


class ExtrasBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    resize_mode: Int = 0
    show_extras_results: bool = True
    gfpgan_visibility: Float = 0.0
    codeformer_visibility: Float = 0.0
    codeformer_weight: Float = 0.0
    upscaling_resize: Float = 2.0
    upscaling_resize_w: Int = 512
    upscaling_resize_h: Int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: Float = 0.0
    upscale_first: bool = False


class ExtrasSingleBody(ExtrasBody):
    image: str = ""


class ExtrasBatchItem(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchBody(ExtrasBody):
    imageList: list[ExtrasBatchItem] = Field(default_factory=list)  # noqa: N815 - A1111's field name
