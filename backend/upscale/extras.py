"""The Extras tab and API: upscale a picture by a factor or to a size (cropped to the box, centred), with an
optional second upscaler blended in, as A1111's postprocessing upscale script does."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from backend.checks import check_int, check_number
from backend.errors import InvalidRequest
from backend.upscale.resize import IMAGE_UPSCALERS, image_upscaler_names, upscale_by

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_FOLDER_IMAGES = 1000
MAX_SIDE = 16384  # widest "scale to" box


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
    """The request's own fields, before any picture is looked at: types, finite ranges, known upscalers."""
    names = image_upscaler_names(models)
    for field, name in (("upscaler_1", req.upscaler_1), ("upscaler_2", req.upscaler_2)):
        if name not in names:
            raise InvalidRequest(field, f"unknown upscaler '{name}'; available: {', '.join(names)}")
    check_number(req.face_restoration, "gfpgan_visibility", 0.0, 1.0)
    if req.face_restoration > 0:
        raise InvalidRequest("gfpgan_visibility", "face restoration (GFPGAN, CodeFormer) is not available: its "
                                                  "weights would have to be downloaded, and this server is offline")
    if req.resize_mode not in (0, 1) or isinstance(req.resize_mode, bool):
        raise InvalidRequest("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {req.resize_mode!r}")
    check_number(req.upscaler_2_visibility, "extras_upscaler_2_visibility", 0.0, 1.0)
    if req.resize_mode == 0:
        check_number(req.upscaling_resize, "upscaling_resize", 0.0, 8.0)
        if req.upscaling_resize <= 0:
            raise InvalidRequest("upscaling_resize", f"must be above 0, got {req.upscaling_resize}")
        return
    check_int(req.upscaling_resize_w, "upscaling_resize_w", 1, MAX_SIDE)
    check_int(req.upscaling_resize_h, "upscaling_resize_h", 1, MAX_SIDE)
    if req.upscaling_resize_w * req.upscaling_resize_h > max_pixels:
        raise InvalidRequest("upscaling_resize_w", f"{req.upscaling_resize_w}x{req.upscaling_resize_h} is more "
                                                   f"than the configured maximum of {max_pixels} pixels")


def check_picture(size: tuple[int, int], req: ExtrasRequest, models, max_pixels: int) -> None:
    """Refuse, before any work, a picture whose result or any intermediate picture (an upscaler's passes
    overshoot the target before the final resize) would exceed `max_pixels`."""
    if req.upscaler_1 == "None":
        return
    scale = _scale_for(size, req)
    for name in (req.upscaler_1, req.upscaler_2):
        if name == "None":
            continue
        peak = peak_size(size, scale, upscaler_factor(name, scale, models))
        if peak[0] * peak[1] > max_pixels:
            raise InvalidRequest("upscaling_resize", f"upscaling a {size[0]}x{size[1]} picture this way makes a "
                                                     f"{peak[0]}x{peak[1]} picture on the way, more than the "
                                                     f"configured maximum of {max_pixels} pixels")


def peak_size(size: tuple[int, int], scale: float, factor: float) -> tuple[int, int]:
    """The largest picture `upscale_by` makes on the way: up to three passes of `factor` until the picture
    covers int(size * scale) // 8 * 8 (the model's passes overshoot; the final resize only shrinks)."""
    dest = (int(size[0] * scale // 8 * 8), int(size[1] * scale // 8 * 8))
    width, height = size
    for _ in range(3):
        if width >= dest[0] and height >= dest[1]:
            break
        width, height = int(width * factor), int(height * factor)
    return max(width, dest[0]), max(height, dest[1])


def _scale_for(size: tuple[int, int], req: ExtrasRequest) -> float:
    if req.resize_mode == 1:
        return max(req.upscaling_resize_w / size[0], req.upscaling_resize_h / size[1])
    return req.upscaling_resize


def upscaler_factor(name: str, scale: float, models) -> float:
    """How much one pass of the upscaler grows a picture: a model's own factor, PIL's resize `scale`."""
    if name in IMAGE_UPSCALERS:
        return scale
    file = models.find(name) if models is not None else None
    return float(file.scale) if file is not None and file.scale else 4.0


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
    image = upscale_by(image, name, scale, models)
    if req.resize_mode == 1 and req.upscaling_crop:
        cropped = Image.new("RGB", (width, height))
        cropped.paste(image, box=(width // 2 - image.width // 2, height // 2 - image.height // 2))
        image = cropped
        info["Postprocess crop to"] = f"{width}x{height}"
    return image


def folder_pictures(folder: Path, max_pixels: int) -> tuple[list[tuple[Path, tuple[int, int]]], list[str]]:
    """The image files in `folder` (not its subfolders), by name, at most MAX_FOLDER_IMAGES, with their sizes;
    only their headers are read here (the worker opens one at a time). What cannot be used is named in the
    warnings and skipped."""
    if not folder.is_dir():
        raise InvalidRequest("input_dir", "is not a folder on this machine")
    paths, warnings = [], []
    candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(candidates) > MAX_FOLDER_IMAGES:
        warnings.append(f"the folder holds {len(candidates)} pictures; only the first {MAX_FOLDER_IMAGES} are done")
    for path in candidates[:MAX_FOLDER_IMAGES]:
        try:
            paths.append((path, picture_size(path, max_pixels)))
        except (OSError, Image.DecompressionBombError) as err:
            log.warning("extras batch: skipped %s: %s", path.name, err)
            warnings.append(f"skipped {path.name}: {err}")
    if not paths:
        raise InvalidRequest("input_dir", f"has no pictures ({', '.join(IMAGE_SUFFIXES)})")
    return paths, warnings


def picture_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """A picture file's size from its header, refusing what is not a regular file or is too large."""
    with _open_checked(path, max_pixels) as opened:
        return opened.size


def open_picture(path: Path, max_pixels: int) -> Image.Image:
    """The picture, fully read, with its text chunks (its `parameters` go on to the result)."""
    with _open_checked(path, max_pixels) as opened:
        opened.load()
        return opened.copy()


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """The file opened lazily (header only), once its size is known to be within `max_pixels`."""
    if not path.is_file():
        raise OSError("not a regular file")
    opened = Image.open(path)
    if opened.width * opened.height > max_pixels:
        opened.close()
        raise OSError(f"{opened.width}x{opened.height} is larger than the configured maximum")
    return opened

