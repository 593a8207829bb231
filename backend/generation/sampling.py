"""Seeds, initial noise, the denoiser for a request, and decoding latents to images."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
from PIL import Image

from backend.control.prepare import PreparedControl
from backend.execution import ExecutionContext
from backend.loading.detect import Family
from backend.generation import loop
from backend.generation.noise import ImageNoise
from backend.generation.requests import GenerationRequest
from backend.generation.sample import Refiner
from backend.loading.loader import LoadedModel
from backend.prompts.embeddings import EmbeddingLibrary
from backend.prompts.encode import encoder_for
from backend.samplers import ResolvedSampler

log = logging.getLogger(__name__)


# on_step(step, total_steps, latents) -> None; it may raise to stop sampling.
StepCallback = Callable[[int, int, torch.Tensor], None]


class Hooks(Protocol):
    """What generation reports to, and asks, the job it runs for (backend.jobs.Job)."""

    def report_step(self, step: int, steps: int, latents: torch.Tensor | None = None) -> None: ...

    def check_interrupt(self) -> None: ...


@dataclass(frozen=True)
class Resources:
    """What generation may draw on besides the model: textual-inversion embeddings, upscalers, and a way to
    switch to another model (hires fix's checkpoint): title -> that model, loaded and ready."""

    embeddings: EmbeddingLibrary | None = None
    upscalers: object | None = None  # backend.upscale.models.UpscalerLibrary
    switch_model: Callable[[str], LoadedModel] | None = None
    context: ExecutionContext | None = None  # the worker's; outside it, each model's own device and precisions
    switch_to_refiner: Callable[[], LoadedModel] | None = None  # the request's refiner, loaded and ready
    control: PreparedControl | None = None  # the job's ControlNet units, ready


def context_for(resources: Resources | None, model: LoadedModel) -> ExecutionContext:
    return resources.context if resources and resources.context else ExecutionContext.of_model(model)


@dataclass(frozen=True)
class HiresPass:
    """What the hires fix second pass conditions on: its prompts, its steps and the final size."""

    prompt: str
    negative_prompt: str
    steps: int
    width: int
    height: int


@dataclass
class BatchWork:
    """One batch, prepared: `denoise(hooks)` runs the sampler and returns latents; the worker decodes them (with
    its own out-of-memory fallbacks) and `finish` turns the decoded images into the results (e.g. pastes an
    inpainting back into the original). `ready_images` is set instead when there is nothing to denoise."""

    denoise: Callable[[Hooks], torch.Tensor] | None
    finish: Callable[[list[Image.Image]], list[Image.Image]] = field(default=lambda images: images)
    ready_images: list[Image.Image] | None = None
    decode_model: LoadedModel | None = None  # the model whose VAE decodes the latents, when not the batch's


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
    return work.finish(to_pil(ExecutionContext.of_model(work.decode_model or model).decode(
        work.decode_model or model, latents)))


def image_noise(req: GenerationRequest, seeds: list[int]) -> ImageNoise:
    """The batch's noise as A1111 makes it. `req.seed`/`req.subseed` are the job's resolved first seeds; image
    i's variation seed is the first variation seed + i, as A1111 counts."""
    subseeds = [req.subseed + (seed - req.seed) for seed in seeds]
    return ImageNoise(seeds, subseeds, req.subseed_strength, (req.seed_resize_from_w, req.seed_resize_from_h),
                      req.eta_noise_seed_delta, req.rng_source)


def latent_shape(model: LoadedModel, height: int, width: int) -> tuple[int, int, int]:
    return (4, height // 8, width // 8)


def make_denoiser(model: LoadedModel, req: GenerationRequest, hooks: Hooks,
                  inpaint_channels: torch.Tensor | None = None, resources: Resources | None = None,
                  sampler: ResolvedSampler | None = None, hires: HiresPass | None = None) -> loop.Denoiser:
    """The request's prompts (weights, schedules, AND, embeddings) as per-step conditioning over the UNet.
    Prompt schedules count model calls, so second-order samplers count two per step (as A1111)."""
    encoder = encoder_for(model, req.emphasis, resources.embeddings if resources else None)
    calls_per_step = 2 if sampler is not None and sampler.sampler.second_order else 1
    first_pass = req.steps * calls_per_step
    if hires is None:
        cond, uncond = loop.build_conds(encoder, req.prompt, req.negative_prompt, first_pass, req.clip_skip,
                                        hooks.check_interrupt)
        size = (req.height, req.width)
    else:
        cond, uncond = loop.build_conds(encoder, hires.prompt, hires.negative_prompt, hires.steps * calls_per_step,
                                        req.clip_skip, hooks.check_interrupt, first_pass_steps=first_pass)
        size = (hires.height, hires.width)
    sdxl_size = size if model.family is Family.SDXL else None
    empty = encoder.encode([""], req.clip_skip, 1, hooks.check_interrupt) if req.pad_conds == "pad" else None
    control = resources.control.pass_for(hires is not None) if resources and resources.control else None
    return loop.Denoiser(model.unet, cond, uncond, req.cfg_scale, model.dtype, sdxl_size, inpaint_channels,
                         req.s_min_uncond, req.s_min_uncond_all, req.pad_conds, empty, req.batch_cond_uncond,
                         context_for(resources, model).upcast_sampling,
                         req.refiner_aesthetic_scores if model.is_sdxl_refiner else None, control,
                         skip_early_cond=req.skip_early_cond)


def refiner_for(req: GenerationRequest, hooks: Hooks, work: BatchWork, resources: Resources | None,
                sampler: ResolvedSampler | None, hires: HiresPass | None = None,
                inpaint_channels: torch.Tensor | None = None) -> Refiner | None:
    """The request's refiner for one sampling pass (None: none, or this pass does not switch): when it takes
    over, its encoders condition the rest of the pass, and its VAE decodes."""
    if not req.refiner_checkpoint or resources is None or resources.switch_to_refiner is None:
        return None
    if req.enable_hr and req.kind == "txt2img":
        wanted = ("second pass", "both passes") if hires is not None else ("first pass", "both passes")
        if req.hires_refiner_pass not in wanted:
            return None

    def take_over() -> tuple[loop.Denoiser, LoadedModel]:
        model = resources.switch_to_refiner()
        work.decode_model = model
        channels = inpaint_channels if model.is_inpainting else None
        # ControlNet steers the base model only: the extension's hook stays on it when the refiner takes over
        without_control = dataclasses.replace(resources, control=None)
        return make_denoiser(model, req, hooks, channels, without_control, sampler, hires), model

    return Refiner(req.refiner_switch_at, take_over)


def to_pil(pixels: torch.Tensor,
           adjust: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[Image.Image]:
    """(-1..1) NCHW -> PIL images, converted to 8 bits by truncation as A1111 does (astype, not rounding). NaN
    (kept only under --disable-nan-check) is black. `adjust` changes the 0..1 pictures first (A1111's
    postprocess_batch: ControlNet's inpaint_only and recolor)."""
    unit = ((pixels.float().nan_to_num(-1.0) + 1) / 2).clamp(0, 1).cpu()
    if adjust is not None:
        unit = adjust(unit)
    array = unit.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray((255.0 * a).astype(np.uint8)) for a in array]


def encode_image(context: ExecutionContext, model: LoadedModel, image: Image.Image) -> torch.Tensor:
    """RGB image -> scaled latents (1, 4, h/8, w/8). The distribution's mean keeps img2img deterministic."""
    return context.encode_images(model, [image]).mode().float() * model.vae.config.scaling_factor
