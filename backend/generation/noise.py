"""Initial noise exactly as A1111 makes it (modules/rng.py): per image a generator seeded with the image's
seed; variation seeds blended in with A1111's slerp; "seed resize from" drawing the noise at another size and
pasting it centred; and the generators then continue for ancestral samplers' extra noise, reseeded with
seed + ENSD when eta_noise_seed_delta is set.

RNG sources (A1111's `randn_source`): CPU (torch's CPU generator; our default), NV (CUDA's Philox numbers
computed on the CPU: the same as GPU on any machine) and GPU (torch's CUDA generator; needs CUDA)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from backend.generation.philox import PhiloxGenerator


RNG_SOURCES = ("CPU", "GPU", "NV")


class _TorchDraws:
    def __init__(self, seed: int, device: str):
        self.generator = torch.Generator(device).manual_seed(seed)
        self.device = device

    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)


class _PhiloxDraws(PhiloxGenerator):
    def randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(super().randn(shape))


def make_generator(seed: int, source: str = "CPU"):
    """A generator with `randn(shape)` (a tensor on its own device), continuing from draw to draw."""
    if source == "NV":
        return _PhiloxDraws(seed)
    return _TorchDraws(seed, "cuda" if source == "GPU" else "cpu")


def _randn(seed: int, shape: tuple[int, ...], generator=None, source: str = "CPU") -> torch.Tensor:
    return (generator or make_generator(seed, source)).randn(shape)


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical blend of two (C, H, W) noises. Note: it normalises along dim 1 (the height), which
    is what A1111 computes; changing it would change every variation-seed image."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / so).unsqueeze(1) * low + \
        (torch.sin(strength * omega) / so).unsqueeze(1) * high


def _paste_centred(noise: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """Put `noise` (drawn at the 'resize from' size) in the middle of `canvas`, cropping whichever is larger."""
    dx = (canvas.shape[2] - noise.shape[2]) // 2
    dy = (canvas.shape[1] - noise.shape[1]) // 2
    w = noise.shape[2] if dx >= 0 else noise.shape[2] + 2 * dx
    h = noise.shape[1] if dy >= 0 else noise.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    canvas[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
    return canvas


@dataclass
class ImageNoise:
    """The noise of one batch. `first(shape)` is the initial noise; `generators` then continue (for the
    sampler's extra noise)."""

    seeds: list[int]
    subseeds: list[int] = field(default_factory=list)
    subseed_strength: float = 0.0
    resize_from: tuple[int, int] = (0, 0)  # (width, height) in pixels; 0 = off
    ensd: int = 0  # eta_noise_seed_delta
    source: str = "CPU"

    def __post_init__(self):
        self.generators = [make_generator(s, self.source) for s in self.seeds]

    @property
    def torch_generators(self) -> list[torch.Generator] | None:
        """For diffusers schedulers that draw noise themselves (CPU source only)."""
        return [g.generator for g in self.generators] if self.source == "CPU" else None

    def next(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The next draw of every image's generator (ancestral samplers' extra noise)."""
        return torch.stack([g.randn(shape) for g in self.generators])

    def first(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """(batch, C, H, W) for latents of `shape` (C, H, W)."""
        w, h = self.resize_from
        noise_shape = shape if w <= 0 or h <= 0 else (shape[0], h // 8, w // 8)
        images = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            if noise_shape != shape:
                noise = _randn(seed, noise_shape, source=self.source)
            else:
                noise = _randn(seed, shape, generator)
            if self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, _randn(subseed, noise_shape, source=self.source))
            if noise_shape != shape:
                noise = _paste_centred(noise, _randn(seed, shape, generator))
            images.append(noise)
        if self.ensd:
            self.generators = [make_generator(s + self.ensd, self.source) for s in self.seeds]
        return torch.stack(images)
