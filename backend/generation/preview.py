"""A cheap live preview: latents -> RGB by a fixed linear map, no VAE and no extra model."""

from __future__ import annotations

import torch
from PIL import Image

from backend.loading.detect import Family

# Least-squares fits of RGB from the 4 latent channels (data facts, widely used for previews).
_SD_FACTORS = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
_SDXL_FACTORS = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
                 [-0.3730, -0.2499, -0.2088]]


def latent_preview(latent: torch.Tensor, family: Family) -> Image.Image:
    """`latent`: (4, h, w) for one image. Returns an (8w x 8h)/8 = w x h thumbnail, upscaled 4x for visibility."""
    factors = torch.tensor(_SDXL_FACTORS if family is Family.SDXL else _SD_FACTORS)
    rgb = torch.einsum("chw,cr->hwr", latent[:4].detach().float().cpu(), factors)
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    return image.resize((image.width * 4, image.height * 4), Image.Resampling.NEAREST)
