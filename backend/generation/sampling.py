"""Seeds, initial noise, running a diffusers pipeline with progress, and decoding latents to images."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from PIL import Image

from backend.loading.detect import Family
from backend.generation.requests import GenerationRequest
from backend.loading.loader import LoadedModel
from backend.prompts.encode import Conditioning, chunk_count, encoder_for
from backend.samplers import ResolvedSampler

log = logging.getLogger(__name__)

# on_step(step, total_steps, latents) -> None; it may raise to stop sampling.
StepCallback = Callable[[int, int, torch.Tensor], None]


class Hooks(Protocol):
    """What generation reports to, and asks, the job it runs for (backend.jobs.Job)."""

    def report_step(self, step: int, steps: int, latents: torch.Tensor | None = None) -> None: ...

    def check_interrupt(self) -> None: ...


@dataclass
class BatchWork:
    """One batch, prepared: `denoise(hooks)` runs the sampler and returns latents; the worker decodes them (with
    its own out-of-memory fallbacks) and `finish` turns the decoded images into the results (e.g. pastes an
    inpainting back into the original). `ready_images` is set instead when there is nothing to denoise."""

    denoise: Callable[[Hooks], torch.Tensor] | None
    finish: Callable[[list[Image.Image]], list[Image.Image]] = field(default=lambda images: images)
    ready_images: list[Image.Image] | None = None


class NoHooks:
    """For running a batch outside a job (tests, benchmarks): no progress, never interrupted."""

    def report_step(self, step: int, steps: int, latents: torch.Tensor | None = None) -> None:
        pass

    def check_interrupt(self) -> None:
        pass


def make_images(model: LoadedModel, work: BatchWork, hooks: Hooks | None = None) -> list[Image.Image]:
    """Denoise, decode and finish one batch directly, without the worker's out-of-memory fallbacks."""
    if work.ready_images is not None:
        return work.ready_images
    latents = work.denoise(hooks or NoHooks())
    return work.finish(to_pil(decode_latents(model, latents)))


def seeded_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def initial_noise(generators: list[torch.Generator], height: int, width: int, channels: int = 4) -> torch.Tensor:
    """A1111's "RNG source: CPU": each image's noise from its own CPU generator, identical on every device."""
    return torch.stack([torch.randn((channels, height // 8, width // 8), generator=g) for g in generators])


def encode_prompts(model: LoadedModel, req: GenerationRequest, batch: int,
                   check_interrupt: Callable[[], None] | None = None):
    """cond and uncond for a batch. Both get the same number of chunks (the pipelines need equal lengths);
    SDXL with an empty negative prompt is conditioned on zeros, as in A1111."""
    encoder = encoder_for(model, req.emphasis)
    chunks = chunk_count(encoder, [req.prompt, req.negative_prompt])
    cond = encoder.encode([req.prompt] * batch, req.clip_skip, chunks, check_interrupt)
    if model.family is Family.SDXL and req.negative_prompt == "":
        return cond, encoder.zeros(batch, chunks)
    return cond, encoder.encode([req.negative_prompt] * batch, req.clip_skip, chunks, check_interrupt)


def conditioning_kwargs(model: LoadedModel, cond: Conditioning, uncond: Conditioning) -> dict:
    kwargs = dict(prompt_embeds=cond.embeds, negative_prompt_embeds=uncond.embeds)
    if model.family is Family.SDXL:
        kwargs.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=uncond.pooled)
    return kwargs


def step_callback(on_step: StepCallback):
    def callback(pipe, index, timestep, tensors):
        on_step(index + 1, pipe.num_timesteps, tensors["latents"])
        return tensors

    return callback


def prepare_pipeline(model: LoadedModel, kind: str, sampler: ResolvedSampler):
    pipe = model.pipeline(kind)
    pipe.scheduler = sampler.make_scheduler(model.scheduler_config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Latents -> pixels in -1..1, decoded in the VAE's dtype (or `dtype`, which the VAE is cast to for this)."""
    vae = model.vae
    scaled = latents / vae.config.scaling_factor
    if dtype is None or dtype == vae.dtype:
        return vae.decode(scaled.to(vae.dtype)).sample
    before = vae.dtype
    vae.to(dtype)
    try:
        return vae.decode(scaled.to(dtype)).sample
    finally:
        vae.to(before)


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """(-1..1) NCHW -> PIL images, rounded like diffusers' image processor."""
    array = (pixels.float() / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


@torch.no_grad()
def encode_image(model: LoadedModel, image: Image.Image) -> torch.Tensor:
    """RGB image -> scaled latents (1, 4, h/8, w/8). The distribution's mean keeps img2img deterministic."""
    vae = model.vae
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    pixels = torch.from_numpy(array).permute(2, 0, 1)[None].to(model.execution_device, vae.dtype)
    return vae.encode(pixels).latent_dist.mode().float() * vae.config.scaling_factor
