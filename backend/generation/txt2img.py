"""txt2img: prompt -> latents, one batch at a time, through the one denoising loop."""

from __future__ import annotations

from backend.generation import sampling
from backend.generation.img2img import txt2img_with_inpainting_model
from backend.generation.requests import GenerationRequest
from backend.generation.sample import Start, sample
from backend.loading.loader import LoadedModel
from backend.prompts.embeddings import EmbeddingLibrary
from backend.samplers import ResolvedSampler


def prepare_txt2img(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                    embeddings: EmbeddingLibrary | None = None) -> sampling.BatchWork:
    if model.is_inpainting:
        return txt2img_with_inpainting_model(model, req, sampler, seeds, embeddings)

    def denoise(hooks: sampling.Hooks):
        rng = sampling.image_noise(req, seeds)
        noise = rng.first(sampling.latent_shape(model, req.height, req.width))
        denoiser = sampling.make_denoiser(model, req, hooks, embeddings=embeddings)
        return sample(model, req, sampler, seeds, rng, noise, denoiser, hooks, Start())

    return sampling.BatchWork(denoise)
