"""txt2img: prompt -> latents, one batch at a time, through the one denoising loop; with hires fix, a second
pass at the target size (backend/generation/hires.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from backend.execution import ExecutionContext
from backend.generation import hires, sampling
from backend.generation.img2img import txt2img_with_inpainting_model
from backend.generation.noise import make_generator
from backend.generation.requests import GenerationRequest, hires_schedule, hires_target
from backend.generation.sample import Start, sample
from backend.loading.loader import LoadedModel
from backend.upscale.resize import upscale_image
from backend.samplers import ResolvedSampler, resolve


def prepare_txt2img(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                    resources: sampling.Resources | None = None) -> sampling.BatchWork:
    if model.is_inpainting:
        return txt2img_with_inpainting_model(model, req, sampler, seeds, resources)

    work = sampling.BatchWork(None)

    def denoise(hooks: sampling.Hooks):
        rng = sampling.image_noise(req, seeds)
        noise = rng.first(sampling.latent_shape(model, req.height, req.width))
        denoiser = sampling.make_denoiser(model, req, hooks, resources=resources, sampler=sampler)
        latents = sample(model, req, sampler, seeds, rng, noise, denoiser, hooks, Start())
        if not req.enable_hr:
            return latents
        return _hires_pass(model, req, sampler, seeds, latents, hooks, resources, work)

    work.denoise = denoise
    return work


def _hires_pass(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                latents: torch.Tensor, hooks: sampling.Hooks, resources: sampling.Resources | None,
                work: sampling.BatchWork) -> torch.Tensor:
    """The second pass; with a hires checkpoint, A1111 switches models after the first pass (and its decode,
    for an image upscaler): the new model encodes, samples and decodes."""
    to = hires_target(req)
    upscaler = req.hr_upscaler or "Latent"
    images = None
    context = sampling.context_for(resources, model)
    if upscaler in hires.LATENT_MODES:
        samples = hires.upscale_latents(latents, upscaler, to)
    else:
        hooks.check_interrupt()
        context.check_unet_output(latents, model.dtype)  # before a decode could blame the VAE
        images = sampling.to_pil(context.decode(model, latents))
        models = resources.upscalers if resources else None
        images = [upscale_image(image, upscaler, to.width, to.height, models) for image in images]
    if req.hr_checkpoint:
        model = resources.switch_model(req.hr_checkpoint)
        work.decode_model = model
    if images is not None:
        samples = _encode_sampled(context, model, images, seeds, req.rng_source)
    samples = hires.crop_latents(samples, to)
    width, height = to.final_size
    hr_req = dataclasses.replace(req, width=width, height=height)
    hr_sampler = resolve(req.hr_sampler_name or req.sampler_name, req.hr_scheduler or req.scheduler)
    total, run = hires_schedule(req)
    second = sampling.HiresPass(req.hr_prompt or req.prompt, req.hr_negative_prompt or req.negative_prompt, run,
                                width, height)
    rng = sampling.image_noise(hr_req, seeds)
    noise = rng.first(sampling.latent_shape(model, height, width))
    denoiser = sampling.make_denoiser(model, req, hooks, resources=resources, sampler=hr_sampler, hires=second)
    start = Start(samples, req.denoising_strength, total_steps=total, run_steps=run)
    return sample(model, hr_req, hr_sampler, seeds, rng, noise, denoiser, hooks, start)


def _encode_sampled(context: ExecutionContext, model: LoadedModel, images, seeds: list[int],
                    source: str) -> torch.Tensor:
    """Images -> latents, taking a sample of the VAE's latent distribution as A1111 does (mean + std * noise),
    the noise being each image's seed's noise at the latent shape."""
    pixels = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) / 255.0 for i in images])).permute(0, 3, 1, 2)
    dist = context.encode(model, pixels * 2 - 1)
    noise = torch.stack([make_generator(seed, source).randn(tuple(dist.mean.shape[1:])) for seed in seeds])
    latents = dist.mean.float() + dist.std.float() * noise.to(dist.mean.device)
    return latents * model.vae.config.scaling_factor
