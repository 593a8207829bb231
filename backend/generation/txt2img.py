"""txt2img: prompt -> latents, one batch at a time."""

from __future__ import annotations

from backend.generation import sampling
from backend.generation.img2img import txt2img_with_inpainting_model
from backend.generation.requests import GenerationRequest
from backend.loading.loader import LoadedModel
from backend.samplers import ResolvedSampler


def prepare_txt2img(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler,
                    seeds: list[int]) -> sampling.BatchWork:
    if model.is_inpainting:
        return txt2img_with_inpainting_model(model, req, sampler, seeds)

    def denoise(hooks: sampling.Hooks):
        generators = sampling.seeded_generators(seeds)
        noise = sampling.initial_noise(generators, req.height, req.width)
        cond, uncond = sampling.encode_prompts(model, req, len(seeds), hooks.check_interrupt)
        pipe = sampling.prepare_pipeline(model, "txt2img", sampler)
        return pipe(
            **sampling.conditioning_kwargs(model, cond, uncond),
            height=req.height,
            width=req.width,
            num_inference_steps=req.steps,
            guidance_scale=req.cfg_scale,
            generator=generators,
            latents=noise.to(model.execution_device, model.dtype),
            output_type="latent",
            callback_on_step_end=sampling.step_callback(hooks.report_step),
        ).images.float()

    return sampling.BatchWork(denoise)
