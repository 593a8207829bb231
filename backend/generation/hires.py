"""Hires fix, as A1111 1.10's txt2img does it: the first pass at the requested size; its latents upscaled (a
latent mode) or its image upscaled and encoded again; then an img2img pass at the target size through the same
loop, with fresh seed noise, running the last K steps of a schedule of int(K / denoising strength) steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest

# A1111's latent upscale modes: F.interpolate(mode, antialias) on the latents
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# Image upscalers without a model: PIL resampling (A1111's None, Lanczos and Nearest)
IMAGE_UPSCALERS = {"None": Image.LANCZOS, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}


def upscaler_names(models=None) -> list[str]:
    """Latent modes, then None/Lanczos/Nearest, then the model upscalers (an UpscalerLibrary) by name."""
    return [*LATENT_MODES, *IMAGE_UPSCALERS, *([f.name for f in models.all()] if models else [])]


def image_upscaler_names(models=None) -> list[str]:
    """A1111's upscaler list without the latent modes (None, Lanczos, Nearest, the models): what Extras and SD
    upscale take."""
    return [name for name in upscaler_names(models) if name not in LATENT_MODES]


def check_upscaler(name: str, models=None) -> None:
    if name not in upscaler_names(models):
        raise InvalidRequest("hr_upscaler", f"unknown upscaler '{name}'; available: {', '.join(upscaler_names(models))}")


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


def target(req: GenerationRequest) -> HiresTarget:
    """A1111's calculate_target_resolution."""
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


def second_pass_steps(req: GenerationRequest) -> tuple[int, int]:
    """(steps of the whole schedule, steps that run): K = hr_second_pass_steps or steps; int(K / min(d, .999))."""
    k = req.hr_second_pass_steps or req.steps
    strength = min(req.denoising_strength, 0.999)
    return (int(k / strength) if req.denoising_strength > 0 else 0), k


def upscale_latents(latents: torch.Tensor, mode_name: str, to: HiresTarget) -> torch.Tensor:
    mode, antialias = LATENT_MODES[mode_name]
    return F.interpolate(latents, size=(to.height // 8, to.width // 8), mode=mode, antialias=antialias)


def to_uint8_images(pixels: torch.Tensor) -> list[Image.Image]:
    array = ((pixels.float() + 1) / 2).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((255.0 * a).astype(np.uint8)) for a in array]


def upscale_by(image: Image.Image, name: str, scale: float, models=None) -> Image.Image:
    """A1111's Upscaler.upscale: passes of the upscaler (Lanczos/Nearest: a PIL resize by `scale`; a model: its
    own factor, see backend/upscale/models.py) until the image covers int(size * scale) // 8 * 8, then LANCZOS
    to exactly that."""
    if name not in IMAGE_UPSCALERS:
        return models.upscale(image, name, scale)
    dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
    for _ in range(3):
        if image.width >= dest[0] and image.height >= dest[1]:
            break
        image = image.resize((int(image.width * scale), int(image.height * scale)), IMAGE_UPSCALERS[name])
    if image.size != dest:
        image = image.resize(dest, Image.LANCZOS)
    return image


def upscale_image(image: Image.Image, name: str, width: int, height: int, models=None) -> Image.Image:
    """A1111's resize_image(0, ...): "None" resizes straight to the size with LANCZOS; an upscaler scales by
    the factor that covers the box (`upscale_by`), then LANCZOS to the size."""
    if name == "None":
        return image.resize((width, height), Image.LANCZOS)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        image = upscale_by(image, name, scale, models)
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    return image


def crop_latents(latents: torch.Tensor, to: HiresTarget) -> torch.Tensor:
    ty, tx = to.truncate_y, to.truncate_x
    return latents[:, :, ty // 2 : latents.shape[2] - (ty + 1) // 2, tx // 2 : latents.shape[3] - (tx + 1) // 2]
