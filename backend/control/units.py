"""A ControlNet unit with the extension's fields, names, defaults and checks; its infotext entry
(`ControlNet 0: "Module: canny, Model: ..., ..."`) and the way back."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from PIL import Image

from backend.checks import check_number
from backend.control import preprocess
from backend.control.images import RESIZE_MODES
from backend.errors import InvalidRequest

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")
_RESIZE_ALIASES = {"Inner Fit (Scale to Fit)": "Crop and Resize", "Outer Fit (Shrink to Fit)": "Resize and Fill",
                   "Scale to Fit (Inner Fit)": "Crop and Resize", "Envelope (Outer Fit)": "Resize and Fill"}
_LEGACY_ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image"}
# Fields of the extension's unit that change nothing here unless they differ from their default.
_UNSUPPORTED = {"advanced_weighting": None, "effective_region_mask": None, "ipadapter_input": None,
                "animatediff_batch": False, "batch_images": None, "input_mode": "simple"}
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")


@dataclass(frozen=True)
class ControlUnit:
    """One enabled unit, checked. `image`/`mask` None: the img2img picture is the input."""

    model: str
    module: str = "none"
    weight: float = 1.0
    image: Image.Image | None = None
    mask: Image.Image | None = None
    resize_mode: str = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = 512
    threshold_a: float = 0.5
    threshold_b: float = 0.5
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    hr_option: str = "Both"
    save_detected_map: bool = True

    def infotext(self) -> str:
        """The extension's serialisation: `Display Name: value` pairs."""
        values = {"module": self.module, "model": self.model, "weight": self.weight,
                  "resize_mode": self.resize_mode, "processor_res": self.processor_res,
                  "threshold_a": self.threshold_a, "threshold_b": self.threshold_b,
                  "guidance_start": self.guidance_start, "guidance_end": self.guidance_end,
                  "pixel_perfect": self.pixel_perfect, "control_mode": self.control_mode}
        return ", ".join(f"{_display(k)}: {values[k]}" for k in INFOTEXT_FIELDS)


def _display(field: str) -> str:
    return " ".join(word.capitalize() for word in field.split("_"))


def parse_infotext(text: str) -> dict:
    """`Module: canny, Model: x [h], ...` -> unit fields (values as the extension parses them)."""
    fields = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition(": ")
        if not sep:
            raise InvalidRequest("ControlNet", f"cannot read the infotext entry {item.strip()[:60]!r}")
        fields["_".join(w.lower() for w in key.split(" "))] = _parse_value(value)
    return fields


def _parse_value(value: str):
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _choice(field: str, value, choices: tuple[str, ...], aliases: dict | None = None) -> str:
    """A string choice, or its older integer form (the index)."""
    if isinstance(value, bool):
        raise InvalidRequest(field, f"expected one of {', '.join(choices)}, got {value!r}")
    if isinstance(value, int) and 0 <= value < len(choices):
        return choices[value]
    value = (aliases or {}).get(value, value)
    if value not in choices:
        raise InvalidRequest(field, f"expected one of {', '.join(choices)}, got {str(value)[:60]!r}")
    return value


def _number(field: str, value, low: float = -math.inf, high: float = math.inf) -> float:
    check_number(value, field, low, high)  # NaN is never within a range
    return float(value)


def _flag(field: str, value) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(field, f"expected true or false, got {str(value)[:60]!r}")
    return value


def from_fields(values: dict, field: str, decode_image) -> ControlUnit | None:
    """The extension's unit dict (API `alwayson_scripts.controlnet.args[i]`, or a pasted infotext's) -> a
    checked unit; None when it is not enabled. `decode_image(value, field)` reads a picture."""
    values = dict(values)
    for alias, name in _LEGACY_ALIASES.items():
        if alias in values:
            if name in values:
                raise InvalidRequest(f"{field}.{alias}", f"conflicts with {name!r}: give only one")
            values[name] = values.pop(alias)
    if "mask_image" in values:
        if values.get("mask") is not None:
            raise InvalidRequest(f"{field}.mask_image", "cannot be given with 'mask'")
        values["mask"] = values.pop("mask_image")
    if not _flag(f"{field}.enabled", values.get("enabled", False)):
        return None
    for name, default in _UNSUPPORTED.items():
        if values.get(name, default) not in (default, [], ""):
            raise InvalidRequest(f"{field}.{name}", "is not supported here")
    module = str(values.get("module", "none"))
    pre = preprocess.find(module, f"{field}.module")
    res, a, b = pre.settle(_number(f"{field}.processor_res", values.get("processor_res", -1)),
                           _number(f"{field}.threshold_a", values.get("threshold_a", -1)),
                           _number(f"{field}.threshold_b", values.get("threshold_b", -1)))
    start = _number(f"{field}.guidance_start", values.get("guidance_start", 0.0), 0.0, 1.0)
    end = _number(f"{field}.guidance_end", values.get("guidance_end", 1.0), 0.0, 1.0)
    if start > end:
        raise InvalidRequest(f"{field}.guidance_start", f"guidance_start ({start}) > guidance_end ({end})")
    image, mask = _images(values, field, decode_image)
    return ControlUnit(
        model=str(values.get("model", "None")), module=pre.name,
        weight=_number(f"{field}.weight", values.get("weight", 1.0), 0.0, 2.0), image=image, mask=mask,
        resize_mode=_choice(f"{field}.resize_mode", values.get("resize_mode", "Crop and Resize"), RESIZE_MODES,
                            _RESIZE_ALIASES),
        low_vram=_flag(f"{field}.low_vram", values.get("low_vram", False)), processor_res=res, threshold_a=a,
        threshold_b=b, guidance_start=start, guidance_end=end,
        pixel_perfect=_flag(f"{field}.pixel_perfect", values.get("pixel_perfect", False)),
        control_mode=_choice(f"{field}.control_mode", values.get("control_mode", "Balanced"), CONTROL_MODES),
        hr_option=_choice(f"{field}.hr_option", values.get("hr_option", "Both"), HR_OPTIONS),
        save_detected_map=_flag(f"{field}.save_detected_map", values.get("save_detected_map", True)))


def _images(values: dict, field: str, decode_image) -> tuple[Image.Image | None, Image.Image | None]:
    """The unit's picture and mask: `image` as base64, `{image, mask}`, `[image, mask]`, or with `mask`."""
    image, mask = values.get("image"), values.get("mask")
    if isinstance(image, (list, tuple)):
        if len(image) != 2 or isinstance(image[0], dict):
            raise InvalidRequest(f"{field}.image", "several input images per unit are not supported here")
        image, mask = image
    elif isinstance(image, dict):
        image, mask = image.get("image"), image.get("mask")
    if image is None:
        if mask is not None:
            raise InvalidRequest(f"{field}.mask", "a mask needs an image")
        return None, None
    picture = decode_image(image, f"{field}.image")
    matte = None if mask is None else decode_image(mask, f"{field}.mask")
    if matte is not None and matte.size != picture.size:
        raise InvalidRequest(f"{field}.mask", f"is {matte.size}, the image {picture.size}: they must match")
    return picture, matte


def with_model(unit: ControlUnit, model: str) -> ControlUnit:
    return dataclasses.replace(unit, model=model)
