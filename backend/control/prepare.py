"""A job's ControlNet units made ready once per job, as the extension's `controlnet_main_entry`: the input
picture (the unit's, or the img2img picture), the preprocessor at its resolution (pixel perfect computes it),
the map at the first pass's size and at hires fix's size, and the ControlNet for the checkpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from backend.control import images, preprocess
from backend.control.inject import ActiveUnit, ControlPass
from backend.control.models import ControlNetLibrary
from backend.control.units import ControlUnit
from backend.errors import InvalidRequest
from backend.generation import image_ops

# A1111's img2img resize modes as the extension reads them when the unit takes the img2img picture
IMG2IMG_RESIZE = {0: "Just Resize", 1: "Crop and Resize", 2: "Resize and Fill", 3: "Just Resize"}


@dataclass
class PreparedControl:
    units: list[ActiveUnit]
    hires_enabled: bool
    sdxl: bool
    maps: list[Image.Image] = field(default_factory=list)  # detected maps the caller gets back
    infotext: tuple[tuple[str, str], ...] = ()  # ("ControlNet 0", "Module: ..., ...")
    post: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (kind, the final size's map)
    inpaint_blur: int = 7  # the extension's control_net_inpaint_blur_sigma

    def pass_for(self, hires: bool) -> ControlPass:
        return ControlPass(self.units, hires, self.hires_enabled, self.sdxl)

    def post_process(self, pixels: torch.Tensor) -> torch.Tensor:
        """The extension's changes to the decoded pictures ((B, 3, H, W) in 0..1, before 8-bit): inpaint_only
        puts the map back outside its (dilated, blurred) mask; recolor puts the map's lightness back."""
        for kind, hint in self.post:
            if hint.shape[-2:] != pixels.shape[-2:]:
                continue
            if kind == "inpaint_only":
                pixels = _paste_outside_mask(pixels, hint, self.inpaint_blur)
            else:
                pixels = _recolor(pixels, hint, kind)
        return pixels


def _paste_outside_mask(pixels: torch.Tensor, hint: torch.Tensor, sigma: int) -> torch.Tensor:
    mask = hint[0, 3].numpy().astype(np.float32)
    mask = cv2.blur(cv2.dilate(mask, np.ones((sigma, sigma), dtype=np.uint8)), (sigma, sigma))
    mask = torch.from_numpy(mask)[None, None].to(pixels)
    return (mask * pixels.clip(0, 1) + (1 - mask) * hint[:, :3].to(pixels)).clip(0, 1)


def _recolor(pixels: torch.Tensor, hint: torch.Tensor, kind: str) -> torch.Tensor:
    """Replace LAB's L (luminance) or HSV's V (intensity) of each picture by the map's first channel."""
    to_space, back, channel = (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0) if kind == "recolor_luminance" else (
        cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2)
    feed = (hint[0, 0].numpy() * 255).clip(0, 255).astype(np.uint8)
    out = []
    for picture in pixels:
        h = (picture.detach().cpu().numpy().transpose((1, 2, 0)) * 255).clip(0, 255).astype(np.uint8)
        h = cv2.cvtColor(h, to_space)
        h[:, :, channel] = feed
        h = cv2.cvtColor(h, back)
        out.append(torch.from_numpy((h.astype(np.float32) / 255.0).transpose((2, 0, 1))).clip(0, 1))
    return torch.stack(out).to(pixels)


def numpy_seed(seed: int, subseed_requested: int) -> int:
    """The extension's numpy seed: seed + subseed, where a random (-1) subseed counts as the seed."""
    subseed = seed if subseed_requested == -1 else max(int(subseed_requested), 0)
    return (max(int(seed), 0) + subseed) & 0xFFFFFFFF


@dataclass(frozen=True)
class Img2ImgInput:
    """What a unit without a picture of its own takes from img2img: the picture, A1111's resize mode, and the
    inpainting mask (blurred and inverted as A1111 prepares it)."""

    image: Image.Image | None = None
    resize_mode: int = 0
    mask: Image.Image | None = None
    mask_blur: tuple[int, int] = (4, 4)
    invert_mask: bool = False

    def prepared_mask(self, size: tuple[int, int]) -> np.ndarray:
        if self.mask is None:
            return np.zeros((size[1], size[0]), np.uint8)
        mask = self.mask.convert("L")
        if self.invert_mask:
            mask = ImageOps.invert(mask)
        return np.array(image_ops.blur_mask(mask, *self.mask_blur))


def input_picture(unit: ControlUnit, img2img: Img2ImgInput, field_name: str,
                  takes_mask: bool) -> tuple[np.ndarray, str]:
    """The unit's input and the resize mode that applies to it. Inpaint units get RGBA (the mask in alpha).
    Otherwise a unit's mask with a drawing in it (neither all clear nor all opaque) is itself the input, as
    the extension's canvas scribble."""
    if unit.image is None:
        if img2img.image is None:
            raise InvalidRequest(f"{field_name}.image", "ControlNet is enabled but no input image is given")
        rgb = images.hwc3(np.asarray(img2img.image.convert("RGB")))
        resize_mode = IMG2IMG_RESIZE.get(img2img.resize_mode, "Just Resize")
        if takes_mask:
            return np.concatenate([rgb, img2img.prepared_mask(img2img.image.size)[:, :, None]], axis=2), resize_mode
        return rgb, resize_mode
    rgb = np.ascontiguousarray(np.asarray(unit.image.convert("RGB")))
    alpha = np.zeros(rgb.shape[:2], np.uint8) if unit.mask is None else np.asarray(unit.mask.convert("RGB"))[:, :, 0]
    if takes_mask:
        return np.concatenate([rgb, alpha[:, :, None]], axis=2), unit.resize_mode
    if unit.mask is not None and not ((alpha <= 5).all() or (alpha >= 250).all()):
        return images.hwc3(np.ascontiguousarray(alpha)), unit.resize_mode
    return rgb, unit.resize_mode


def detect_map(unit: ControlUnit, pre: preprocess.Preprocessor, picture: np.ndarray, resize_mode: str,
               height: int, width: int, seed: int) -> tuple[np.ndarray, ControlUnit]:
    """`pre`'s map; with pixel perfect, the unit's processor_res as the extension computes it."""
    if unit.pixel_perfect:
        unit = dataclasses.replace(unit, processor_res=images.pixel_perfect_resolution(picture, height, width,
                                                                                       resize_mode))
    return preprocess.run(pre, picture, unit.processor_res, unit.threshold_a, unit.threshold_b, seed), unit


def prepare(units: tuple[ControlUnit, ...], library: ControlNetLibrary, unet, device: torch.device,
            dtype: torch.dtype, *, size: tuple[int, int], hires_size: tuple[int, int] | None,
            img2img: Img2ImgInput, seed: int, sdxl: bool, offload: bool, keep_maps: bool,
            encode: Callable[[torch.Tensor], torch.Tensor]) -> PreparedControl:
    """`size`/`hires_size` are (width, height) of the first pass and of hires fix (None: no hires fix);
    `encode(pixels in -1..1)` gives a picture's scaled latent (for inpaint_only and tile_colorfix)."""
    width, height = (size[0] // 8) * 8, (size[1] // 8) * 8
    prepared = PreparedControl([], hires_size is not None, sdxl)
    texts = []
    for index, unit in enumerate(units):
        name = f"controlnet.args[{index}]"
        texts.append((f"ControlNet {index}", unit.infotext()))  # as asked (before pixel perfect), as the extension
        pre = preprocess.find(unit.module)
        model = library.load(library.find(unit.model, f"{name}.model"), unet, device if not (
            offload or unit.low_vram) else torch.device("cpu"), dtype, f"{name}.model")
        picture, resize_mode = input_picture(unit, img2img, name, pre.takes_mask)
        detected, unit = detect_map(unit, pre, picture, resize_mode, height, width, seed)
        hint_map = images.fit(detected, resize_mode, height, width, pre.takes_mask)
        hr_map = None
        if hires_size is not None:
            hr_map = images.fit(detected, resize_mode, (hires_size[1] // 8) * 8, (hires_size[0] // 8) * 8,
                                pre.takes_mask)
        if keep_maps and unit.save_detected_map:
            prepared.maps += [Image.fromarray(preprocess.shown_map(pre, m).clip(0, 255).astype(np.uint8))
                              for m in (hr_map, hint_map) if m is not None]
        hint = images.to_hint(hint_map)
        hr_hint = None if hr_map is None else images.to_hint(hr_map)
        active = ActiveUnit(unit, model, hint, hr_hint, soft_in_hires=pre.soft_in_hires,
                            offload=offload or unit.low_vram, adjusts_output=pre.adjusts_output)
        if pre.adjusts_output:
            active.latent = encode(hint[:, :3] * 2 - 1)
            active.hr_latent = None if hr_hint is None else encode(hr_hint[:, :3] * 2 - 1)
        if pre.post_process:
            prepared.post.append((pre.post_process, hr_hint if hr_hint is not None else hint))
        prepared.units.append(active)
    prepared.infotext = tuple(texts)
    return prepared
