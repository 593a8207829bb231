"""The job runner: what the worker thread does with a job. A generation job loads its model, merges its
networks, and runs its batches (or its script) on the one loop, with the memory fallbacks; then it decodes,
builds each image's infotext from the job's record and saves. An Extras job upscales one picture at a time."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from backend import scripts
from backend.control.models import ControlNetLibrary
from backend.control.prepare import Img2ImgInput, PreparedControl, numpy_seed, prepare as prepare_control
from backend.errors import CheckpointError, InvalidRequest, Interrupted
from backend.execution import ExecutionContext
from backend.generation import sampling
from backend.generation.img2img import prepare_img2img
from backend.generation.preview import PreviewMaker
from backend.generation.parameters import image_parameters
from backend.generation.requests import GenerationRequest, check_prompt_chunks, hires_target, resolve_seed
from backend.generation.results import GenerationResult
from backend.generation.sample import decoder_blocks, interruptible_blocks
from backend.generation.tiling import seamless
from backend.generation.txt2img import prepare_txt2img
from backend.grid import make_grid
from backend.jobs import Job, SkipBatch
from backend.loading.detect import Family
from backend.loading.loader import LoadedModel
from backend.memory.fallback import run_with_fallbacks
from backend.memory.policy import Measures
from backend.model_manager import ModelManager
from backend.networks.apply import NetworkApplier
from backend.options import Options
from backend.outputs import OutputWriter, read_infotext
from backend.prompts.embeddings import EmbeddingLibrary
from backend.prompts.encode import encoder_for
from backend.registry import ModelFile
from backend.samplers import ResolvedSampler, resolve
from backend.settings import Settings
from backend.upscale.extras import ExtrasRequest, open_picture, run_extras
from backend.upscale.models import UpscalerLibrary
from backend.upscale.resize import upscale_by

log = logging.getLogger(__name__)


@dataclass
class ExtrasResult:
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)  # `Postprocess upscale by: 2, Postprocess upscaler: ...`
    parameters: list[str | None] = field(default_factory=list)  # each source's own generation parameters
    warnings: list[str] = field(default_factory=list)
    count: int = 0  # pictures done (more than `images` when a folder batch keeps only the first results)


@dataclass
class ExtrasJob:
    """What the worker upscales: pictures, or picture files it opens one at a time; where results go; how
    many results to keep for the caller (None: all)."""

    sources: list[Image.Image | Path]
    req: ExtrasRequest
    save: bool
    folder: Path | None = None
    keep: int | None = None


MAX_KEPT_FOLDER_RESULTS = 32  # a folder batch shows its first results; all of them are saved


@dataclass
class _Denoised:
    """One part of a batch after sampling: latents to decode (or ready images) and how to finish them."""

    work: sampling.BatchWork
    latents: torch.Tensor | None
    interrupted: bool = False


class _StepHooks:
    """What sampling reports to: the job (progress, interrupt, skip), and a live preview when one is due."""

    def __init__(self, job: Job, previews: PreviewMaker, context: ExecutionContext, model: Callable[[], LoadedModel]):
        self.job, self.previews, self.context, self.model = job, previews, context, model

    def report_step(self, step: int, steps: int, latents: torch.Tensor | None = None) -> None:
        self.job.report_step(step, steps, latents)
        progress, every = self.job.progress, self.previews.every()
        if latents is not None and every and step - max(progress.preview_step, 0) >= every:
            progress.preview = self.previews.make(self.context, self.model(), latents)
            progress.preview_step = step

    def check_interrupt(self) -> None:
        self.job.check_interrupt()


class JobRunner:
    """Runs generation and Extras jobs on the worker thread (the only one that touches the device)."""

    def __init__(self, settings: Settings, models: ModelManager, outputs: OutputWriter, options: Options,
                 embeddings: EmbeddingLibrary, networks: NetworkApplier, upscalers: UpscalerLibrary,
                 resources: sampling.Resources, controlnets: ControlNetLibrary | None = None,
                 on_unloadable: Callable[[ModelFile], None] = lambda c: None,
                 prepare: Callable[[GenerationRequest], GenerationRequest] = lambda req: req):
        self.settings, self.models, self.registry = settings, models, models.registry
        self.all_outputs, self.options, self.embeddings = outputs, options, embeddings
        self.outputs = outputs  # where the running job saves: its account's own folder with private outputs
        self.networks, self.upscalers = networks, upscalers
        self.controlnets = controlnets
        placement = models.placement
        # what jobs run with; only this (the worker's) thread uses it
        self.context = ExecutionContext(
            placement.device, placement.dtype, placement.vae_dtype, nan_check=settings.nan_check,
            upcast_sampling=settings.upcast_sampling,
            auto_vae_precision=lambda: bool(options.get("auto_vae_precision")), on_vae_upcast=models.use_fp32_vae,
            apply_measures=models.apply)
        self.resources = dataclasses.replace(resources, context=self.context)
        self.previews = PreviewMaker(options, settings.vae_approx_folder)
        self.on_unloadable = on_unloadable  # the facade forgets an implicit default that cannot load
        self.prepare = prepare  # the facade's checks of a script's job, which it returns ready to run

    def generate(self, job: Job) -> GenerationResult:
        self.outputs = self.outputs_for(job.owner)
        return self._generate(job, job.payload)

    def extras(self, job: Job) -> ExtrasResult:
        self.outputs = self.outputs_for(job.owner)
        return self._run_extras(job, job.payload)

    def outputs_for(self, owner: str) -> OutputWriter:
        """With private outputs, an account's images go to its own folder (A1111's layout inside)."""
        return self.all_outputs.for_owner(owner) if self.settings.private_outputs and owner else self.all_outputs

    def _run_extras(self, job: Job, work: ExtrasJob) -> ExtrasResult:
        """One picture at a time: folder pictures are opened here, and results beyond `work.keep` are saved and
        let go, so a folder batch never holds the whole folder in memory."""
        result = ExtrasResult()
        limit = self.settings.limits.max_upload_pixels
        for index, source in enumerate(work.sources):
            if job.interrupted:
                result.warnings.append(f"interrupted after {index} of {len(work.sources)} pictures")
                break
            job.progress.textinfo = f"Extras: picture {index + 1} of {len(work.sources)}"
            try:
                image = open_picture(source, limit) if isinstance(source, Path) else source
            except (OSError, Image.DecompressionBombError) as err:
                result.warnings.append(f"skipped {source.name}: {err}")
                continue
            upscaled, info = run_extras(image, work.req, self.upscalers)
            text = ", ".join(f"{k}: {v}" for k, v in info.items())
            texts = {"parameters": read_infotext(image) or "", "postprocessing": text, "extras": text}
            texts = {k: v for k, v in texts.items() if v}
            if work.keep is None or len(result.images) < work.keep:
                result.images.append(upscaled)
                result.infotexts.append(text)
                result.parameters.append(texts.get("parameters"))
            if work.save and work.folder is not None:
                self._save(result, lambda upscaled=upscaled, texts=texts, stem=source.stem:
                           self.outputs.save_named(upscaled, work.folder, stem, texts))
            elif work.save:
                self._save(result, lambda upscaled=upscaled, texts=texts: self.outputs.save_extras(upscaled, texts))
            result.count += 1
        return result

    def _generate(self, job: Job, req: GenerationRequest) -> GenerationResult:
        if req.script is not None:
            return self._run_script(job, req)
        checkpoint = self.registry.find_checkpoint(req.checkpoint)
        job.progress.textinfo = f"loading {checkpoint.title}"
        try:
            model = self.models.get(checkpoint, req.vae)
        except CheckpointError:
            self.on_unloadable(checkpoint)
            raise
        sampler = resolve(req.sampler_name, req.scheduler)
        req = dataclasses.replace(req, seed=resolve_seed(req.seed), subseed=resolve_seed(req.subseed))
        hr_checkpoint = self.registry.find_checkpoint(req.hr_checkpoint) if req.hr_checkpoint else None
        result = GenerationResult(req, checkpoint=checkpoint, vae=self.models.current_vae, sampler=sampler,
                                  hr_checkpoint=hr_checkpoint, job_timestamp=time.strftime("%Y%m%d%H%M%S"),
                                  inpainting_conditioning=model.is_inpainting)
        req = self._apply_networks(model, req, result)  # the prompt loses its <lora:...> tags for encoding
        self._check_prompts(model, req, result)
        control = self._prepare_control(model, req, result) if req.control_units else None
        width, height = hires_target(req).final_size if req.enable_hr and req.kind == "txt2img" else (req.width,
                                                                                                     req.height)
        measures = self.models.plan.for_request(width, height, req.batch_size)
        with seamless([model.unet, model.vae], req.tiling):
            self._run_batches(job, model, req, sampler, result, measures, control)
        if len(result.images) > 1:
            result.grid = make_grid(result.images)
            if req.save_images and not result.interrupted and self.options.get("grid_save"):
                result.grid_path = self._save(result, lambda: self.outputs.save_grid(result.grid, req.kind,
                                                                                     result.infotexts[0]))
        return result

    def _run_batches(self, job: Job, model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler,
                     result: GenerationResult, measures: Measures, control: PreparedControl | None) -> None:
        first_seed = req.seed
        for batch_no in range(req.n_iter):
            try:
                job.start_batch(batch_no, req.n_iter)
            except Interrupted:
                result.interrupted = True
                break
            job.progress.textinfo = f"batch {batch_no + 1} of {req.n_iter}"
            seeds = [first_seed + batch_no * req.batch_size + i for i in range(req.batch_size)]

            def attempt(m: Measures, seeds=seeds) -> list[_Denoised]:
                return self._denoise(model, req, sampler, seeds, job, m, result, control)

            try:
                parts, _ = run_with_fallbacks(attempt, measures, len(seeds), self.models.device)
            except SkipBatch:
                continue
            measures = self.context.measures  # the attempt that worked, with any decode measure it needed
            try:
                images, measures = self._decode(model, parts, measures, job, control)
            except Interrupted:  # during a long decode: the batches before this one are kept
                result.interrupted = True
                break
            interrupted = any(part.interrupted for part in parts)
            keep_partial = bool(self.options.get("save_incomplete_images"))  # A1111's option, off by default
            self._collect(result, req, images, seeds[: len(images)], measures, save=not interrupted or keep_partial)
            if interrupted:
                result.interrupted = True
                break

    def _run_script(self, job: Job, req: GenerationRequest) -> GenerationResult:
        """A script: its jobs run here, one after another, each as the request it equals (prepared by the
        facade: styles, checkpoint); its pictures are the result. Pictures the jobs did not save themselves are
        saved with their infotexts, grids in the grids folder (as A1111)."""
        if not scripts.keeps_random_seeds(req.script):
            req = dataclasses.replace(req, seed=resolve_seed(req.seed), subseed=resolve_seed(req.subseed))

        def process(sub_req: GenerationRequest) -> GenerationResult:
            return self._generate(job, self.prepare(sub_req))

        def report(text: str) -> None:
            job.progress.textinfo = text
            job.check_interrupt()

        def count_job(done: int, total: int) -> None:
            job.progress.job_no, job.progress.job_count = done, total

        def infotext(result: GenerationResult, extra: tuple) -> str:
            request = dataclasses.replace(result.request, extra_params=result.request.extra_params + extra)
            return image_parameters(request, result, result.seeds[0] if result.seeds else request.seed)

        result = GenerationResult(req, job_timestamp=time.strftime("%Y%m%d%H%M%S"))

        def save_named(image: Image.Image, folder: Path, stem: str, text: str) -> None:
            self._save(result, lambda: self.outputs.save_named(image, folder, stem, {"parameters": text}))

        tools = scripts.ScriptTools(process, lambda image, name, scale: upscale_by(image, name, scale, self.upscalers),
                                    report, count_job, infotext, lambda: job.interrupted,
                                    return_grid=bool(self.options.get("return_grid")), save_named=save_named)
        try:
            output = scripts.run(req.script, req, tools)
        except Interrupted:
            result.interrupted = True
            return result
        finally:
            job.progress.job_no, job.progress.job_count = 0, 1
        template = output.template
        if template is not None:
            result = dataclasses.replace(template, request=req, images=[], infotexts=[], seeds=[], paths=[],
                                         grid=None, grid_path=None, warnings=result.warnings + template.warnings)
        result.warnings += [w for w in output.warnings if w not in result.warnings]
        result.interrupted = output.interrupted
        keep_partial = bool(self.options.get("save_incomplete_images"))
        for index, (image, seed, text) in enumerate(zip(output.images, output.seeds, output.texts(), strict=True)):
            result.images.append(image)
            result.seeds.append(seed)
            result.infotexts.append(text)
            grid = index < output.grids
            wanted = self.options.get("grid_save") if grid else not output.saved
            if not req.save_images or not wanted or (output.interrupted and not keep_partial):
                continue
            if grid:
                self._save(result, lambda image=image, text=text: self.outputs.save_grid(image, req.kind, text,
                                                                                         output.grid_name))
                continue
            path = self._save(result, lambda image=image, seed=seed, text=text: self.outputs.save_image(
                image, req.kind, seed, text))
            if path is not None:
                result.paths.append(path)
        return result

    def _apply_networks(self, model: LoadedModel, req: GenerationRequest,
                        result: GenerationResult) -> GenerationRequest:
        """Merge the prompt's networks into the model; the request goes on without the tags (for encoding)."""
        chosen = self.networks.choose(req.prompt, req.network_hashes, req.disable_extra_networks)
        result.networks, result.hypernetworks = chosen.networks, chosen.hypernetworks
        result.warnings += [w for w in chosen.warnings if w not in result.warnings]
        self._patch_networks(model, result)
        return dataclasses.replace(req, prompt=chosen.prompt)

    def _patch_networks(self, model: LoadedModel, result: GenerationResult) -> None:
        warnings = self.networks.patch(model, result.networks, result.hypernetworks)
        result.warnings += [w for w in warnings if w not in result.warnings]

    def _check_prompts(self, model: LoadedModel, req: GenerationRequest, result: GenerationResult) -> None:
        """Length limits, and which embeddings the prompts use (for `TI hashes`)."""
        encoder = encoder_for(model, req.emphasis, self.embeddings)
        used, chunks = {}, []
        for name in ("prompt", "negative_prompt"):
            text = getattr(req, name)
            chunks.append(len(encoder.chunks(text)))
            check_prompt_chunks(chunks[-1], name, self.settings.limits.max_prompt_chunks)
            used.update({e.name: e for e in encoder.embeddings_used(text)})
        result.embeddings = list(used.values())
        result.prompt_chunks = (chunks[0], chunks[1])

    def _denoise(self, model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                 job: Job, measures: Measures, result: GenerationResult,
                 control: PreparedControl | None = None) -> list[_Denoised]:
        """Sample one batch under `measures`; with a batch split, its parts run one after another (same seeds).
        An interrupt keeps what the current part has reached, as A1111 does."""
        resources = dataclasses.replace(self.resources, control=control)
        if req.enable_hr and req.hr_checkpoint or req.refiner_checkpoint:  # each batch starts on the request's model
            model = self.models.get(self.registry.find_checkpoint(req.checkpoint), req.vae)
            self._patch_networks(model, result)
            resources = dataclasses.replace(
                resources, switch_model=lambda title: self._switch_for_hires(title, req, result, len(seeds)),
                switch_to_refiner=lambda: self._switch_to_refiner(req, result, len(seeds)))
        self.models.apply(measures)
        self.context.measures = measures
        prepare = prepare_txt2img if req.kind == "txt2img" else prepare_img2img
        size = -(-len(seeds) // measures.batch_split)
        parts = []
        for start in range(0, len(seeds), size):
            part = req
            if req.more_init_images:  # a picture per image: each part of a split batch takes its own
                pictures = req.init_images[start : start + size]
                part = dataclasses.replace(req, init_image=pictures[0], more_init_images=tuple(pictures[1:]))
            work = prepare(model, part, sampler, seeds[start : start + size], resources)
            if work.ready_images is not None:
                parts.append(_Denoised(work, None))
                continue
            job.progress.latents = None
            try:
                parts.append(_Denoised(work, work.denoise(_StepHooks(job, self.previews, self.context,
                                                                      lambda work=work: work.decode_model or model))))
            except Interrupted:
                if job.progress.latents is None:
                    raise
                parts.append(_Denoised(work, job.progress.latents.float(), interrupted=True))
                break
        return parts

    def _prepare_control(self, model: LoadedModel, req: GenerationRequest,
                         result: GenerationResult) -> PreparedControl:
        """The job's ControlNet units, once for all its batches: maps detected, models loaded for this
        checkpoint; the infotext entries and the detected maps go into the job's record."""
        if self.controlnets is None:
            raise InvalidRequest("alwayson_scripts", "ControlNet is not available in this server")
        hires_size = hires_target(req).final_size if req.enable_hr and req.kind == "txt2img" else None
        memory = self.settings.memory
        img2img = Img2ImgInput(req.init_image, int(req.resize_mode), req.mask, req.mask_blurs,
                               req.inpainting_mask_invert)

        def encode(pixels: torch.Tensor) -> torch.Tensor:
            return self.context.encode(model, pixels).mode().float() * model.vae.config.scaling_factor

        control = prepare_control(
            req.control_units, self.controlnets, model.unet, model.execution_device, model.dtype,
            size=(req.width, req.height), hires_size=hires_size, img2img=img2img,
            seed=numpy_seed(req.seed, req.control_subseed), sdxl=model.family is Family.SDXL,
            offload=memory.lowvram or memory.medvram, keep_maps=not self.options.get("control_net_no_detectmap"),
            encode=encode)
        result.control_maps = control.maps
        result.control_params = control.infotext
        return control

    def _switch_for_hires(self, title: str, req: GenerationRequest, result: GenerationResult,
                          batch: int) -> LoadedModel:
        """Hires fix's checkpoint: activate it with the job's networks and measures for the final size."""
        model = self.models.get(self.registry.find_checkpoint(title), req.vae)
        self._patch_networks(model, result)
        self.models.apply(self.models.plan.for_request(*hires_target(req).final_size, batch))
        return model

    def _switch_to_refiner(self, req: GenerationRequest, result: GenerationResult, batch: int) -> LoadedModel:
        """The refiner takes over mid-sampling: activated with the job's networks and memory measures; the job's
        record names it (the infotext's `Refiner`)."""
        refiner = self.registry.find_checkpoint(req.refiner_checkpoint)
        model = self.models.get(refiner, req.vae)
        self._patch_networks(model, result)
        size = hires_target(req).final_size if req.enable_hr and req.kind == "txt2img" else (req.width, req.height)
        self.models.apply(self.models.plan.for_request(*size, batch))
        result.refiner = refiner
        return model

    def _decode(self, model: LoadedModel, parts: list[_Denoised], measures: Measures, job: Job,
                control: PreparedControl | None = None) -> tuple[list[Image.Image], Measures]:
        """Each part's latents through its VAE; an interrupt is honoured between the decoder's blocks (unless
        the part was itself interrupted)."""
        images = []
        for part in parts:
            if part.latents is None:
                images += part.work.ready_images
                continue
            decoder = part.work.decode_model or model
            self.context.check_unet_output(part.latents, decoder.dtype)
            self.context.measures = measures
            # an interrupted part is decoded to the end: its picture is what the interrupt keeps
            blocks = [] if part.interrupted else decoder_blocks(decoder)
            with interruptible_blocks(blocks, job.check_interrupt):
                pixels = self.context.decode(decoder, part.latents)
            measures = self.context.measures
            adjust = control.post_process if control is not None and control.post else None
            images += part.work.finish(sampling.to_pil(pixels, adjust))
        return images, measures

    def _collect(self, result: GenerationResult, req: GenerationRequest, images: list[Image.Image],
                 seeds: list[int], measures: Measures, save: bool) -> None:
        for image, seed in zip(images, seeds, strict=True):
            text = image_parameters(result.request, result, seed, measures)
            result.images.append(image)
            result.seeds.append(seed)
            result.infotexts.append(text)
            if req.save_images and save:
                path = self._save(result, lambda image=image, seed=seed, text=text:
                                  self.outputs.save_image(image, req.kind, seed, text))
                if path is not None:
                    result.paths.append(path)

    def _save(self, result: GenerationResult, save) -> Path | None:
        """Save; when that fails (disk full, read-only folder) the images still go back to the user, with a
        warning that says why without naming server paths."""
        try:
            return save()
        except OSError as err:
            log.error("could not save an image: %s", err)
            warning = f"Images were not saved: {err.strerror or type(err).__name__}."
            if warning not in result.warnings:
                result.warnings.append(warning)
            return None

