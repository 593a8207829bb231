"""A job's ControlNet units made ready once per job, as the extension's `controlnet_main_entry`: the input
picture (the unit's, or the img2img picture), the preprocessor at its resolution (pixel perfect computes it),
the map at the first pass's size and at hires fix's size, and the ControlNet for the checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from backend.control import images, preprocess
from backend.control.inject import ActiveUnit, ControlPass
from backend.control.models import ControlNetLibrary
from backend.control.units import ControlUnit
from backend.errors import InvalidRequest

# A1111's img2img resize modes as the extension reads them when the unit takes the img2img picture
IMG2IMG_RESIZE = {0: "Just Resize", 1: "Crop and Resize", 2: "Resize and Fill", 3: "Just Resize"}


@dataclass
class PreparedControl:
    units: list[ActiveUnit]
    hires_enabled: bool
    sdxl: bool
    maps: list[Image.Image] = field(default_factory=list)  # detected maps the caller gets back
    infotext: tuple[tuple[str, str], ...] = ()  # ("ControlNet 0", "Module: ..., ...")

    def pass_for(self, hires: bool) -> ControlPass:
        return ControlPass(self.units, hires, self.hires_enabled, self.sdxl)


def numpy_seed(seed: int, subseed_requested: int) -> int:
    """The extension's numpy seed: seed + subseed, where a random (-1) subseed counts as the seed."""
    subseed = seed if subseed_requested == -1 else max(int(subseed_requested), 0)
    return (max(int(seed), 0) + subseed) & 0xFFFFFFFF


def input_picture(unit: ControlUnit, init_image: Image.Image | None, img2img_resize: int,
                  field_name: str) -> tuple[np.ndarray, str]:
    """The unit's input (H, W, 3) and the resize mode that applies to it. A unit's mask with a drawing in it
    (neither all clear nor all opaque) is itself the input, as the extension's canvas scribble."""
    if unit.image is None:
        if init_image is None:
            raise InvalidRequest(f"{field_name}.image", "ControlNet is enabled but no input image is given")
        return images.hwc3(np.asarray(init_image.convert("RGB"))), IMG2IMG_RESIZE.get(img2img_resize, "Just Resize")
    rgb = np.asarray(unit.image.convert("RGB"))
    if unit.mask is not None:
        alpha = np.asarray(unit.mask.convert("RGB"))[:, :, 0]
        if not ((alpha <= 5).all() or (alpha >= 250).all()):
            return images.hwc3(np.ascontiguousarray(alpha)), unit.resize_mode
    return np.ascontiguousarray(rgb), unit.resize_mode


def detect_map(unit: ControlUnit, picture: np.ndarray, resize_mode: str, height: int, width: int,
               seed: int) -> tuple[np.ndarray, ControlUnit]:
    """The preprocessor's map; with pixel perfect, the unit's processor_res as the extension computes it."""
    if unit.pixel_perfect:
        unit = dataclasses.replace(unit, processor_res=images.pixel_perfect_resolution(picture, height, width,
                                                                                       resize_mode))
    pre = preprocess.find(unit.module)
    return preprocess.run(pre, picture, unit.processor_res, unit.threshold_a, unit.threshold_b, seed), unit


def prepare(units: tuple[ControlUnit, ...], library: ControlNetLibrary, unet, device: torch.device,
            dtype: torch.dtype, *, size: tuple[int, int], hires_size: tuple[int, int] | None,
            init_image: Image.Image | None, img2img_resize: int, seed: int, sdxl: bool, offload: bool,
            keep_maps: bool) -> PreparedControl:
    """`size`/`hires_size` are (width, height) of the first pass and of hires fix (None: no hires fix)."""
    width, height = (size[0] // 8) * 8, (size[1] // 8) * 8
    active, maps, texts = [], [], []
    for index, unit in enumerate(units):
        name = f"controlnet.args[{index}]"
        texts.append((f"ControlNet {index}", unit.infotext()))  # as asked (before pixel perfect), as the extension
        model = library.load(library.find(unit.model, f"{name}.model"), unet, device if not (
            offload or unit.low_vram) else torch.device("cpu"), dtype, f"{name}.model")
        picture, resize_mode = input_picture(unit, init_image, img2img_resize, name)
        detected, unit = detect_map(unit, picture, resize_mode, height, width, seed)
        hint_map = images.fit(detected, resize_mode, height, width)
        hr_map = None
        if hires_size is not None:
            hr_map = images.fit(detected, resize_mode, (hires_size[1] // 8) * 8, (hires_size[0] // 8) * 8)
        if keep_maps and unit.save_detected_map:
            maps += [Image.fromarray(m) for m in (hr_map, hint_map) if m is not None]
        active.append(ActiveUnit(unit, model, images.to_hint(hint_map),
                                 None if hr_map is None else images.to_hint(hr_map),
                                 soft_in_hires=preprocess.find(unit.module).soft_in_hires,
                                 offload=offload or unit.low_vram))
    return PreparedControl(active, hires_size is not None, sdxl, maps, tuple(texts))
