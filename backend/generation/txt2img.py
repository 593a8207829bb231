"""txt2img: prompt -> latents, one batch at a time, through the one denoising loop; with hires fix, a second
pass at the target size (backend/generation/hires.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from backend.execution import ExecutionContext
from backend.generation import hires, sampling
from backend.generation.img2img import blank_inpaint_channels, whole_picture_inpaint_channels
from backend.generation.noise import make_generator
from backend.generation.requests import GenerationRequest, hires_schedule, hires_target
from backend.generation.sample import Start, sample
from backend.loading.loader import LoadedModel
from backend.upscale.resize import upscale_image
from backend.samplers import ResolvedSampler, resolve


def prepare_txt2img(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                    resources: sampling.Resources | None = None) -> sampling.BatchWork:
    """A 9-channel (inpainting) model also sees a blank picture with everything masked, as A1111 conditions it.
    With `req.firstpass_image` (A1111's API field) that picture stands in for the first pass of hires fix."""
    work = sampling.BatchWork(None)

    def denoise(hooks: sampling.Hooks):
        if req.firstpass_image is not None:
            return _hires_pass(model, req, seeds, hooks, resources, work, first_images=_as_first_pass(req, seeds))
        rng = sampling.image_noise(req, seeds)
        noise = rng.first(sampling.latent_shape(model, req.height, req.width))
        channels = _blank_channels(model, req.width, req.height, len(seeds), resources)
        denoiser = sampling.make_denoiser(model, req, hooks, channels, resources=resources, sampler=sampler)
        refiner = sampling.refiner_for(req, hooks, work, resources, sampler, inpaint_channels=channels)
        latents = sample(model, req, sampler, seeds, rng, noise, denoiser, hooks, Start(), refiner)
        if not req.enable_hr:
            return latents
        return _hires_pass(model, req, seeds, hooks, resources, work, latents=latents)

    work.denoise = denoise
    return work


def _blank_channels(model: LoadedModel, width: int, height: int, batch: int,
                    resources: sampling.Resources | None) -> torch.Tensor | None:
    if not model.is_inpainting:
        return None
    context = sampling.context_for(resources, model)
    return blank_inpaint_channels(context, model, width, height).repeat(batch, 1, 1, 1)


def _as_first_pass(req: GenerationRequest, seeds: list[int]) -> list[Image.Image]:
    """The given picture as A1111 hands it to the second pass: to -1..1 and back to 8 bits in float32 (which
    truncates some values one level down), once per image of the batch."""
    levels = np.asarray(req.firstpass_image.convert("RGB")).astype(np.float32) / 255.0 * 2.0 - 1.0
    back = (255.0 * np.clip((levels + 1.0) / 2.0, 0.0, 1.0)).astype(np.uint8)
    return [Image.fromarray(back) for _ in seeds]


def _hires_pass(model: LoadedModel, req: GenerationRequest, seeds: list[int], hooks: sampling.Hooks,
                resources: sampling.Resources | None, work: sampling.BatchWork, latents: torch.Tensor | None = None,
                first_images: list[Image.Image] | None = None) -> torch.Tensor:
    """The second pass, from the first pass's `latents` or given `first_images`; with a hires checkpoint, A1111
    switches models after the first pass (and its decode, for an image upscaler): the new model encodes,
    samples and decodes."""
    to = hires_target(req)
    upscaler = req.hr_upscaler or "Latent"
    refined = work.decode_model is not None  # the refiner took over in the first pass: it goes on (A1111)
    model = work.decode_model or model
    context = sampling.context_for(resources, model)
    images = None
    if upscaler in hires.LATENT_MODES:
        if latents is None:  # a given first pass, encoded as the first pass's model would have made it
            latents = _encode_sampled(context, model, first_images, seeds, req.rng_source)
        samples = hires.upscale_latents(latents, upscaler, to)
    else:
        hooks.check_interrupt()
        if first_images is None:
            context.check_unet_output(latents, model.dtype)  # before a decode could blame the VAE
            first_images = sampling.to_pil(context.decode(model, latents))
        models = resources.upscalers if resources else None
        images = [upscale_image(image, upscaler, to.width, to.height, models) for image in first_images]
    if req.hr_checkpoint:
        model = resources.switch_model(req.hr_checkpoint)
        work.decode_model = model
    if images is not None:
        samples = _encode_sampled(context, model, images, seeds, req.rng_source)
    samples = hires.crop_latents(samples, to)
    width, height = to.final_size
    hr_req = dataclasses.replace(req, width=width, height=height, token_merging_ratio=req.tome_ratio(hires=True))
    hr_sampler = resolve(req.hr_sampler_name or req.sampler_name, req.hr_scheduler or req.scheduler)
    total, run = hires_schedule(req)
    second = sampling.HiresPass(req.hr_prompt or req.prompt, req.hr_negative_prompt or req.negative_prompt, run,
                                width, height)
    rng = sampling.image_noise(hr_req, seeds)
    noise = rng.first(sampling.latent_shape(model, height, width))
    # An inpainting model's second pass sees a blank, fully masked picture at the final size (what A1111's
    # image-upscaler path gives; its latent path builds that at the first pass's size, which cannot run);
    # with inpainting_mask_weight below 1, A1111's image-upscaler path lets the upscaled pictures show through
    if model.is_inpainting and images is not None and req.inpainting_mask_weight != 1.0:
        channels = whole_picture_inpaint_channels(context, model, images, req.inpainting_mask_weight)
    else:
        channels = _blank_channels(model, width, height, len(seeds), resources)
    denoiser = sampling.make_denoiser(model, req, hooks, channels, resources=resources, sampler=hr_sampler,
                                      hires=second)
    start = Start(samples, req.denoising_strength, total_steps=total, run_steps=run,
                  extra_noise=req.img2img_extra_noise)
    refiner = None if refined else sampling.refiner_for(req, hooks, work, resources, hr_sampler, second, channels)
    return sample(model, hr_req, hr_sampler, seeds, rng, noise, denoiser, hooks, start, refiner)


def _encode_sampled(context: ExecutionContext, model: LoadedModel, images, seeds: list[int],
                    source: str) -> torch.Tensor:
    """Images -> latents, taking a sample of the VAE's latent distribution as A1111 does (mean + std * noise),
    the noise being each image's seed's noise at the latent shape."""
    pixels = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) / 255.0 for i in images])).permute(0, 3, 1, 2)
    dist = context.encode(model, pixels * 2 - 1)
    noise = torch.stack([make_generator(seed, source).randn(tuple(dist.mean.shape[1:])) for seed in seeds])
    latents = dist.mean.float() + dist.std.float() * noise.to(dist.mean.device)
    return latents * model.vae.config.scaling_factor
