"""Live previews, made by the worker every `show_progress_every_n_steps` steps as A1111 makes them
(`show_progress_type`): "Approx cheap" (a fixed linear map of the latent channels), "Approx NN" and "TAESD" (small
decoders whose weights A1111 keeps in models/VAE-approx), or "Full" (the VAE, through the guarded path). The
HTTP side only reads the last picture made; it never touches a device tensor."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from backend.errors import CheckpointError
from backend.loading.checkpoint_file import read_pickle
from backend.loading.detect import Family

log = logging.getLogger(__name__)

PREVIEW_TYPES = ("Full", "Approx NN", "Approx cheap", "TAESD")

# A1111's cheap approximation: RGB from the 4 latent channels (least-squares fits; data facts).
_SD_FACTORS = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
_SDXL_FACTORS = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
                 [-0.3730, -0.2499, -0.2088]]

# The weight files A1111 looks for in models/VAE-approx, by preview type and "is SDXL".
WEIGHT_FILES = {("Approx NN", False): "model.pt", ("Approx NN", True): "vaeapprox-sdxl.pt",
                ("TAESD", False): "taesd_decoder.pth", ("TAESD", True): "taesdxl_decoder.pth"}


def cheap_approximation(latents: torch.Tensor, family: Family) -> torch.Tensor:
    """(n, 4, h, w) -> (n, 3, h, w) in about -1..1."""
    factors = torch.tensor(_SDXL_FACTORS if family is Family.SDXL else _SD_FACTORS, device=latents.device)
    return torch.einsum("nchw,cr->nrhw", latents[:, :4].float(), factors)


def latent_preview(latent: torch.Tensor, family: Family) -> Image.Image:
    """One image's (4, h, w) latents as the cheap approximation, upscaled 4x for visibility."""
    image = to_image(cheap_approximation(latent[None], family)[0])
    return image.resize((image.width * 4, image.height * 4), Image.Resampling.NEAREST)


def to_image(pixels: torch.Tensor) -> Image.Image:
    """(3, h, w) in -1..1 -> 8 bits by truncation, as A1111's single_sample_to_image."""
    array = ((pixels.float() + 1) / 2).clamp(0, 1).cpu().permute(1, 2, 0).numpy()
    return Image.fromarray((255.0 * array).astype(np.uint8))


class ApproxDecoder(nn.Module):
    """A1111's "Approx NN" (VAEApprox): eight unpadded convolutions with leaky ReLU over the latents doubled in
    size and padded by 11, giving the picture at a quarter of its size."""

    def __init__(self, latent_channels: int = 4):
        super().__init__()
        widths = [latent_channels, 8, 16, 32, 64, 32, 16, 8, 3]
        kernels = [7, 5, 3, 3, 3, 3, 3, 3]
        for i, kernel in enumerate(kernels):
            setattr(self, f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], kernel))

    def forward(self, x):
        x = F.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2))
        x = F.pad(x, (11, 11, 11, 11))
        for i in range(8):
            x = F.leaky_relu(getattr(self, f"conv{i + 1}")(x), 0.1)
        return x


class _TaesdBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        self.skip = nn.Identity()

    def forward(self, x):
        return F.relu(self.conv(x) + self.skip(x))


class _SoftClamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


def taesd_decoder(latent_channels: int = 4) -> nn.Sequential:
    """The Tiny AutoEncoder's decoder (madebyollin/taesd), laid out as its released `taesd_decoder.pth` files:
    latents (as sampled) -> pixels in 0..1 at 8x the size."""
    layers: list[nn.Module] = [_SoftClamp(), nn.Conv2d(latent_channels, 64, 3, padding=1), nn.ReLU()]
    for _ in range(3):
        layers += [_TaesdBlock(64), _TaesdBlock(64), _TaesdBlock(64), nn.Upsample(scale_factor=2),
                   nn.Conv2d(64, 64, 3, padding=1, bias=False)]
    layers += [_TaesdBlock(64), nn.Conv2d(64, 3, 3, padding=1)]
    return nn.Sequential(*layers)


class PreviewMaker:
    """Owned by the worker: which preview is due, and making it in the chosen way."""

    def __init__(self, options, approx_folder: Path):
        self.options, self.approx_folder = options, approx_folder
        self._networks: dict[tuple[str, bool], nn.Module | None] = {}

    def every(self) -> int:
        """Steps between previews; 0 for none."""
        if not self.options.get("live_previews_enable"):
            return 0
        return max(0, int(self.options.get("show_progress_every_n_steps")))

    def make(self, context, model, latents: torch.Tensor) -> Image.Image:
        """The first image of the batch, as the chosen preview type shows it."""
        kind = self.options.get("show_progress_type")
        first = latents[:1].float()
        if kind == "Full":
            return to_image(context.decode(model, first)[0])
        network = self._network(kind, model.family is Family.SDXL) if kind in ("Approx NN", "TAESD") else None
        if network is None:
            return latent_preview(first[0], model.family)
        with torch.no_grad():
            out = network.to(first.device)(first).float()
        return to_image(out[0] * 2 - 1 if kind == "TAESD" else out[0])

    def _network(self, kind: str, sdxl: bool) -> nn.Module | None:
        key = (kind, sdxl)
        if key not in self._networks:
            self._networks[key] = self._load(kind, sdxl)
        return self._networks[key]

    def _load(self, kind: str, sdxl: bool) -> nn.Module | None:
        path = self.approx_folder / WEIGHT_FILES[(kind, sdxl)]
        if not path.is_file():
            log.warning("live preview \"%s\" needs %s in the VAE-approx folder (never downloaded); showing "
                        "\"Approx cheap\" instead", kind, path.name)
            return None
        network = ApproxDecoder() if kind == "Approx NN" else taesd_decoder()
        try:
            state = read_pickle(path)
            network.load_state_dict(state)
        except (CheckpointError, RuntimeError, TypeError) as err:
            log.warning("live preview \"%s\": %s cannot be used (%s); showing \"Approx cheap\" instead",
                        kind, path.name, err)
            return None
        return network.eval()
