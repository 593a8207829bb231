"""img2img and inpainting with A1111's semantics (resize modes, mask blur, masked content, only-masked area,
and an exact paste-back of the original outside the mask)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from backend.errors import InvalidRequest
from backend.execution import ExecutionContext
from backend.generation import image_ops, sampling
from backend.generation.noise import ImageNoise
from backend.generation.requests import GenerationRequest, MaskedContent, ResizeMode
from backend.generation.sample import Start, sample
from backend.loading.loader import LoadedModel
from backend.samplers import ResolvedSampler
from backend.upscale.resize import image_upscaler_names, upscale_image

GRAY = (127, 127, 127)


@dataclass
class InpaintWork:
    """The picture and mask at generation size, and how to put the results back into the original."""

    image: Image.Image  # what is generated from (masked-content "fill" already applied)
    mask: Image.Image  # blurred mask at generation size
    latent_mask: Image.Image  # what is repainted in latent space: the blurred mask, or the request's latent_mask
    overlay_base: Image.Image  # pixels kept outside the mask
    overlay_mask: Image.Image  # blurred mask at the overlay's size
    region: tuple[int, int, int, int] | None  # only-masked crop box in the original, else None
    resize: image_ops.Resize = image_ops.lanczos  # how pictures are scaled (A1111's upscaler_for_img2img)

    def paste_back(self, generated: Image.Image) -> Image.Image:
        if self.region is None:
            return image_ops.composite(self.overlay_base, generated, self.overlay_mask)
        x1, y1, x2, y2 = self.region
        canvas = self.overlay_base.copy()  # A1111 pastes the picture back cropped to the region's shape
        canvas.paste(image_ops.resize_image(generated, x2 - x1, y2 - y1, ResizeMode.CROP_AND_RESIZE, self.resize),
                     (x1, y1))
        return image_ops.composite(self.overlay_base, canvas, self.overlay_mask)


def prepare_img2img(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                    resources: sampling.Resources | None = None) -> sampling.BatchWork:
    if req.mask is not None:
        return prepare_inpaint_batch(model, req, sampler, seeds, resources)
    if model.is_inpainting:
        if req.more_init_images:
            raise InvalidRequest("init_images", "several init images are not supported with an inpainting model "
                                                "here: send one request per picture")
        image = image_ops.resize_image(image_ops.flatten(req.init_image, req.img2img_background), req.width,
                                       req.height, req.resize_mode, picture_resize(req, resources))
        white = Image.new("L", image.size, 255)
        return _inpainting_model_work(model, req, sampler, seeds, image, white, resources=resources)
    work = sampling.BatchWork(None)
    work.denoise = lambda hooks: _sample_regular(model, req, sampler, seeds, _init_latents(model, req, resources),
                                                 None, hooks, resources, work)
    return work


def blank_inpaint_channels(context: ExecutionContext, model: LoadedModel, width: int, height: int) -> torch.Tensor:
    """What a 9-channel model sees for txt2img and the hires pass: a blank picture, everything masked."""
    blank = Image.new("RGB", (width, height), GRAY)
    return _inpaint_channels(context, model, blank, Image.new("L", blank.size, 255))


def whole_picture_inpaint_channels(context: ExecutionContext, model: LoadedModel, images: list[Image.Image],
                                   weight: float) -> torch.Tensor:
    """A 9-channel model's view of whole pictures, everything masked (A1111's hires pass after an image
    upscaler): with inpainting_mask_weight below 1 the pictures show through."""
    return torch.cat([_inpaint_channels(context, model, image, Image.new("L", image.size, 255), weight)
                      for image in images])


def prepare_inpaint_batch(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler,
                          seeds: list[int], resources: sampling.Resources | None = None) -> sampling.BatchWork:
    work = prepare_inpaint(req, picture_resize(req, resources))

    def latent_mask_for(latents: torch.Tensor) -> torch.Tensor:
        return _latent_mask(work.latent_mask, latents.shape[-2:], req.mask_round).to(latents.device)

    def masked_content(latents: torch.Tensor) -> torch.Tensor:
        return _masked_content_latents(latents, latent_mask_for(latents), req, len(seeds))

    if model.is_inpainting:  # the same picture and starting latents; the UNet also sees the mask
        batch = _inpainting_model_work(model, req, sampler, seeds, work.image, work.mask, resources=resources,
                                       start_latents=masked_content)
    else:
        batch = sampling.BatchWork(None)

        def denoise(hooks: sampling.Hooks):
            latents = sampling.encode_image(sampling.context_for(resources, model), model, work.image)
            return _sample_regular(model, req, sampler, seeds, masked_content(latents), latent_mask_for(latents),
                                   hooks, resources, batch)

        batch.denoise = denoise
    batch.finish = lambda images: [work.paste_back(image) for image in images]
    return batch


def picture_resize(req: GenerationRequest, resources: sampling.Resources | None) -> image_ops.Resize:
    """How img2img scales pictures (never masks): A1111's `upscaler_for_img2img` option names an upscaler that
    enlarges them (then LANCZOS to the size, as A1111's resize_image); None or "None" is LANCZOS alone."""
    name = req.img2img_upscaler
    if name in (None, "None"):
        return image_ops.lanczos
    models = resources.upscalers if resources else None
    if name not in image_upscaler_names(models):
        raise InvalidRequest("upscaler_for_img2img", f"unknown upscaler '{name}'; available: "
                                                     f"{', '.join(image_upscaler_names(models))}")
    return lambda image, width, height: upscale_image(image, name, width, height, models)


def prepare_inpaint(req: GenerationRequest, resize: image_ops.Resize = image_ops.lanczos) -> InpaintWork:
    original = image_ops.flatten(req.init_image, req.img2img_background)
    mask = image_ops.prepare_mask(req.mask, original.size, req.inpainting_mask_invert)
    if mask.getbbox() is None:
        raise InvalidRequest("mask", "the mask is empty: paint (white) the area to repaint")
    blurred = image_ops.blur_mask(mask, *req.mask_blurs)
    size = (req.width, req.height)
    if req.inpaint_full_res:
        region = image_ops.crop_region(blurred, req.inpaint_full_res_padding, req.width, req.height)
        # A1111 fits the region into the generation's size with "resize and fill"
        image = image_ops.resize_image(original.crop(region), *size, ResizeMode.RESIZE_AND_FILL, resize)
        work_mask = image_ops.resize_image(blurred.crop(region), *size, ResizeMode.RESIZE_AND_FILL).convert("L")
        base, overlay_mask = original, blurred
    else:
        region = None
        image = image_ops.resize_image(original, req.width, req.height, req.resize_mode, resize)
        work_mask = image_ops.resize_image(blurred.convert("RGB"), req.width, req.height, req.resize_mode).convert("L")
        base, overlay_mask = image, work_mask.point(lambda v: min(255, 2 * v))  # A1111 doubles it here
    latent_mask = work_mask
    if req.latent_mask is not None:
        latent_mask = image_ops.resize_image(req.latent_mask.convert("RGB"), req.width, req.height,
                                             req.resize_mode).convert("L")
    # A1111 pre-fills for every content but "original" (the latent ones then replace the masked latents)
    filled = image_ops.fill_masked(image, latent_mask) if req.inpainting_fill != MaskedContent.ORIGINAL else image
    return InpaintWork(filled, work_mask, latent_mask, base, overlay_mask, region, resize)


def _init_latents(model: LoadedModel, req: GenerationRequest, resources: sampling.Resources | None) -> torch.Tensor:
    """The latents of each init picture (one, or one per image of the batch)."""
    return torch.cat([_picture_latents(model, req, image, resources) for image in req.init_images])


def _picture_latents(model: LoadedModel, req: GenerationRequest, picture: Image.Image,
                     resources: sampling.Resources | None) -> torch.Tensor:
    context = sampling.context_for(resources, model)
    picture = image_ops.flatten(picture, req.img2img_background)
    if req.resize_mode == ResizeMode.LATENT_UPSCALE:
        image = picture
        image = image.resize((max(8, image.width // 8 * 8), max(8, image.height // 8 * 8)), image_ops.LANCZOS)
        latents = sampling.encode_image(context, model, image)
        return F.interpolate(latents, size=(req.height // 8, req.width // 8), mode="bilinear", align_corners=False)
    image = image_ops.resize_image(picture, req.width, req.height, req.resize_mode, picture_resize(req, resources))
    return sampling.encode_image(context, model, image)


def _latent_mask(mask: Image.Image, size, rounded: bool = True) -> torch.Tensor:
    """The (blurred) mask at latent size (1 = repaint), as A1111 makes it: a bicubic resize, then rounded to 0/1
    unless mask_round is off (a soft mask blends picture and denoised latents)."""
    small = mask.convert("RGB").resize((size[1], size[0]), Image.BICUBIC)
    values = np.asarray(small, dtype=np.float32)[..., 0] / 255.0
    return torch.from_numpy(np.round(values) if rounded else values)[None, None]


def _masked_content_latents(latents: torch.Tensor, mask: torch.Tensor, req: GenerationRequest,
                            batch: int) -> torch.Tensor:
    """The batch's starting latents with A1111's latent fills under the mask: "latent noise" is noise of the
    RNG source from the job's first seeds (A1111 fills once, in init, from all_seeds[:batch_size], without
    variation seeds), "latent nothing" zeros."""
    latents = latents.repeat(batch // latents.shape[0], 1, 1, 1)
    if req.inpainting_fill == MaskedContent.LATENT_NOISE:
        first_seeds = [req.seed + i for i in range(batch)]
        noise = ImageNoise(first_seeds, source=req.rng_source).first(tuple(latents.shape[1:])).to(latents.device)
        return latents * (1 - mask) + noise * mask
    if req.inpainting_fill == MaskedContent.LATENT_NOTHING:
        return latents * (1 - mask)
    return latents


def _steps_to_run(req: GenerationRequest, strength: float) -> int:
    """int(steps * strength), or the steps themselves with A1111's img2img_fix_steps."""
    if req.img2img_fix_steps and strength > 0:
        return req.steps
    return int(req.steps * strength)


def _sample_regular(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                    latents: torch.Tensor, latent_mask: torch.Tensor | None, hooks: sampling.Hooks,
                    resources: sampling.Resources | None = None, work: sampling.BatchWork | None = None) -> torch.Tensor:
    """img2img on a 4-channel model; with `latent_mask` (1 = repaint), everything else stays the picture."""
    latents = latents.repeat(len(seeds) // latents.shape[0], 1, 1, 1)
    if _steps_to_run(req, req.denoising_strength) < 1:
        return latents  # strength 0: nothing to denoise
    rng = sampling.image_noise(req, seeds)
    noise = _starting_noise(req, rng, tuple(latents.shape[1:]))
    denoiser = sampling.make_denoiser(model, req, hooks, resources=resources, sampler=sampler)
    keep = None if latent_mask is None else 1 - latent_mask
    refiner = sampling.refiner_for(req, hooks, work, resources, sampler) if work is not None else None
    return sample(model, req, sampler, seeds, rng, noise, denoiser, hooks,
                  Start.img2img(latents, req, req.denoising_strength, keep), refiner)


def _starting_noise(req: GenerationRequest, rng, shape: tuple[int, int, int]) -> torch.Tensor:
    """The batch's first noise; A1111 scales img2img's (not txt2img's) by initial_noise_multiplier."""
    noise = rng.first(shape)
    return noise * req.initial_noise_multiplier if req.kind == "img2img" else noise


def _inpainting_model_work(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                          image: Image.Image, mask: Image.Image, strength: float | None = None,
                          resources: sampling.Resources | None = None,
                          start_latents=None) -> sampling.BatchWork:
    """9-channel models: the UNet also sees the mask and the latents of the picture with the masked area
    blanked, concatenated to its input."""
    strength = req.denoising_strength if strength is None else strength
    if strength < 1.0 and _steps_to_run(req, strength) < 1:
        return sampling.BatchWork(None, ready_images=[image.copy() for _ in seeds])

    work = sampling.BatchWork(None)

    def denoise(hooks: sampling.Hooks):
        rng = sampling.image_noise(req, seeds)
        noise = _starting_noise(req, rng, sampling.latent_shape(model, req.height, req.width))
        channels = _inpaint_channels(sampling.context_for(resources, model), model, image, mask,
                                     req.inpainting_mask_weight, req.mask_round).repeat(len(seeds), 1, 1, 1)
        denoiser = sampling.make_denoiser(model, req, hooks, channels, resources, sampler)
        start = Start()
        if strength < 1.0:
            latents = sampling.encode_image(sampling.context_for(resources, model), model, image).repeat(len(seeds), 1, 1, 1)
            start = Start.img2img(start_latents(latents) if start_latents else latents, req, strength)
        refiner = sampling.refiner_for(req, hooks, work, resources, sampler, inpaint_channels=channels)
        return sample(model, req, sampler, seeds, rng, noise, denoiser, hooks, start, refiner)

    work.denoise = denoise
    return work


def _inpaint_channels(context: ExecutionContext, model: LoadedModel, image: Image.Image, mask: Image.Image,
                      weight: float = 1.0, rounded: bool = True) -> torch.Tensor:
    """(1, 5, h/8, w/8): the mask at latent size (nearest), then the latents of the picture with the masked
    area faded to black-grey zero by `weight` (A1111's inpainting_image_conditioning: a lerp from the picture
    to the masked picture by inpainting_mask_weight; the mask rounded to 0/1 unless mask_round is off)."""
    values = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)[None, None]
    if rounded:
        values = torch.round(values)
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    masked = torch.lerp(pixels, pixels * (1.0 - values), weight)
    latents = context.encode(model, masked).mode().float() * model.vae.config.scaling_factor
    small = F.interpolate(values, size=latents.shape[-2:])
    return torch.cat([small.to(latents.device), latents], dim=1).to(model.dtype)
