"""Initial noise exactly as A1111 makes it with "RNG source: CPU" (modules/rng.py): per image a CPU generator
seeded with the image's seed; variation seeds blended in with A1111's slerp; "seed resize from" drawing the
noise at another size and pasting it centred; and the generators then continue for ancestral samplers'
extra noise, reseeded with seed + ENSD when eta_noise_seed_delta is set."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _randn(seed: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    generator = generator or torch.Generator("cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator)


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

    def __post_init__(self):
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    def first(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """(batch, C, H, W) for latents of `shape` (C, H, W)."""
        w, h = self.resize_from
        noise_shape = shape if w <= 0 or h <= 0 else (shape[0], h // 8, w // 8)
        images = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators, strict=True)):
            if noise_shape != shape:
                noise = _randn(seed, noise_shape)
            else:
                noise = _randn(seed, shape, generator)
            if self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, _randn(subseed, noise_shape))
            if noise_shape != shape:
                noise = _paste_centred(noise, _randn(seed, shape, generator))
            images.append(noise)
        if self.ensd:
            self.generators = [torch.Generator("cpu").manual_seed(s + self.ensd) for s in self.seeds]
        return torch.stack(images)
