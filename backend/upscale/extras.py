"""The Extras tab and API: upscale a picture by a factor or to a size (cropped to the box, centred), with an
optional second upscaler blended in, as A1111's postprocessing upscale script does."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from backend.errors import InvalidRequest
from backend.generation import hires

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_FOLDER_IMAGES = 1000


@dataclass
class ExtrasRequest:
    resize_mode: int = 0  # 0: scale by upscaling_resize; 1: scale to upscaling_resize_w x _h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0
    face_restoration: float = 0.0  # GFPGAN / CodeFormer visibility: not available offline


def check(req: ExtrasRequest, models, max_pixels: int) -> None:
    names = hires.image_upscaler_names(models)
    for field, name in (("upscaler_1", req.upscaler_1), ("upscaler_2", req.upscaler_2)):
        if name not in names:
            raise InvalidRequest(field, f"unknown upscaler '{name}'; available: {', '.join(names)}")
    if req.face_restoration > 0:
        raise InvalidRequest("gfpgan_visibility", "face restoration (GFPGAN, CodeFormer) is not available: its "
                                                  "weights would have to be downloaded, and this server is offline")
    if req.resize_mode not in (0, 1):
        raise InvalidRequest("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {req.resize_mode}")
    if not 0 < req.upscaling_resize <= 8:
        raise InvalidRequest("upscaling_resize", f"must be between 0 and 8, got {req.upscaling_resize}")
    if req.upscaling_resize_w * req.upscaling_resize_h > max_pixels:
        raise InvalidRequest("upscaling_resize_w", "the target size is larger than the configured maximum")


def run_extras(image: Image.Image, req: ExtrasRequest, models) -> tuple[Image.Image, dict]:
    """The upscaled image and the `Postprocess ...` parameters A1111 reports."""
    info: dict = {}
    image = image.convert("RGB")
    if req.upscaler_1 == "None":
        return image, info  # A1111: no main upscaler, nothing to do
    upscaled = _upscale(image, req.upscaler_1, req, info, models)
    info["Postprocess upscaler"] = req.upscaler_1
    if req.upscaler_2 != "None" and req.upscaler_2_visibility > 0:
        second = _upscale(image, req.upscaler_2, req, info, models)
        upscaled = Image.blend(upscaled, second.convert(upscaled.mode), req.upscaler_2_visibility)
        info["Postprocess upscaler 2"] = req.upscaler_2
    return upscaled, info


def _upscale(image: Image.Image, name: str, req: ExtrasRequest, info: dict, models) -> Image.Image:
    if req.resize_mode == 1:
        width, height = req.upscaling_resize_w, req.upscaling_resize_h
        scale = max(width / image.width, height / image.height)
        info["Postprocess upscale to"] = f"{width}x{height}"
    else:
        scale = req.upscaling_resize
        info["Postprocess upscale by"] = scale
    image = hires.upscale_by(image, name, scale, models)
    if req.resize_mode == 1 and req.upscaling_crop:
        cropped = Image.new("RGB", (width, height))
        cropped.paste(image, box=(width // 2 - image.width // 2, height // 2 - image.height // 2))
        image = cropped
        info["Postprocess crop to"] = f"{width}x{height}"
    return image


def folder_images(folder: Path, max_pixels: int) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    """(name, picture) for every image file in `folder` (not its subfolders), by name; what cannot be used is
    named in the warnings and skipped."""
    if not folder.is_dir():
        raise InvalidRequest("input_dir", f"'{folder}' is not a folder on this machine")
    images, warnings = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_FOLDER_IMAGES]:
        try:
            if not path.is_file():
                raise OSError("not a regular file")
            with Image.open(path) as opened:
                if opened.width * opened.height > max_pixels:
                    raise OSError(f"{opened.width}x{opened.height} is larger than the configured maximum")
                opened.load()
                images.append((path.stem, opened.copy()))
        except (OSError, Image.DecompressionBombError) as err:
            log.warning("extras batch: skipped %s: %s", path.name, err)
            warnings.append(f"skipped {path.name}: {err}")
    if not images:
        raise InvalidRequest("input_dir", f"'{folder}' has no pictures ({', '.join(IMAGE_SUFFIXES)})")
    return images, warnings
