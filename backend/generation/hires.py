"""Hires fix, as A1111 1.10's txt2img does it: the first pass at the requested size; its latents upscaled (a
latent mode) or its image upscaled and encoded again; then an img2img pass at the target size through the same
loop, with fresh seed noise, running the last K steps of a schedule of int(K / denoising strength) steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.errors import InvalidRequest
from backend.generation.requests import HiresTarget
from backend.upscale.resize import image_upscaler_names

# A1111's latent upscale modes: F.interpolate(mode, antialias) on the latents
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def upscaler_names(models=None) -> list[str]:
    """Latent modes, then None/Lanczos/Nearest, then the model upscalers (an UpscalerLibrary) by name."""
    return [*LATENT_MODES, *image_upscaler_names(models)]


def check_upscaler(name: str, models=None) -> None:
    if name not in upscaler_names(models):
        raise InvalidRequest("hr_upscaler", f"unknown upscaler '{name}'; available: {', '.join(upscaler_names(models))}")


def upscale_latents(latents: torch.Tensor, mode_name: str, to: HiresTarget) -> torch.Tensor:
    mode, antialias = LATENT_MODES[mode_name]
    return F.interpolate(latents, size=(to.height // 8, to.width // 8), mode=mode, antialias=antialias)


def crop_latents(latents: torch.Tensor, to: HiresTarget) -> torch.Tensor:
    ty, tx = to.truncate_y, to.truncate_x
    return latents[:, :, ty // 2 : latents.shape[2] - (ty + 1) // 2, tx // 2 : latents.shape[3] - (tx + 1) // 2]
