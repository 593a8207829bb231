"""The generation service: validates requests, queues them on the single worker, runs them, saves outputs."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from backend import infotext
from backend.errors import Interrupted
from backend.generation.img2img import generate_img2img
from backend.generation.requests import MASKED_CONTENT_LABELS, GenerationRequest, resolve_seed, validate
from backend.generation.txt2img import generate_txt2img
from backend.grid import make_grid
from backend.jobs import Job, JobQueue, SkipBatch
from backend.loading.loader import LoadedModel
from backend.memory.fallback import run_with_fallbacks
from backend.memory.policy import Measures
from backend.model_manager import ModelManager
from backend.outputs import OutputWriter
from backend.registry import ModelFile
from backend.samplers import ResolvedSampler, resolve
from backend.settings import Settings

log = logging.getLogger(__name__)

VERSION = "v0.1.0"


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    grid: Image.Image | None = None
    grid_path: Path | None = None
    checkpoint: ModelFile | None = None
    sampler: ResolvedSampler | None = None
    interrupted: bool = False
    job_timestamp: str = ""

    @property
    def gallery(self) -> list[Image.Image]:
        """What a gallery shows: the grid first for batches, then each image."""
        return ([self.grid] if self.grid is not None else []) + self.images


class GenerationService:
    def __init__(self, settings: Settings, models: ModelManager, outputs: OutputWriter):
        self.settings = settings
        self.models = models
        self.registry = models.registry
        self.outputs = outputs
        self.queue = JobQueue(self._run_job)

    # ---------------------------------------------------------------- called by the edges (any thread)

    def submit(self, request: GenerationRequest) -> Job:
        """Check the request now (bad input fails fast, before queueing), then queue it."""
        validate(request, self.settings.limits)
        resolve(request.sampler_name, request.scheduler)
        self._checkpoint_for(request)
        if request.vae not in (None, "Automatic", "None"):
            self.registry.find_vae(request.vae)
        return self.queue.submit("generate", request)

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit(request).wait(timeout)

    def load_checkpoint(self, name: str) -> Job:
        checkpoint = self.registry.find_checkpoint(name)
        return self.queue.submit("load", checkpoint)

    def current_checkpoint(self) -> ModelFile | None:
        """The loaded checkpoint, or the one the next job will load."""
        if self.models.current_file is not None:
            return self.models.current_file
        try:
            return self.models.default_checkpoint(self.settings.default_checkpoint)
        except Exception:  # noqa: BLE001 - no checkpoint at all
            return None

    def shutdown(self) -> None:
        self.queue.stop()

    def _checkpoint_for(self, req: GenerationRequest) -> ModelFile:
        """The request's checkpoint, else the loaded one, else the configured or first one."""
        if req.checkpoint:
            return self.registry.find_checkpoint(req.checkpoint)
        return self.models.default_checkpoint(self.settings.default_checkpoint)

    # ---------------------------------------------------------------- the worker

    def _run_job(self, job: Job):
        if job.kind == "load":
            self.models.get(job.payload)
            return job.payload
        return self._generate(job, job.payload)

    def _generate(self, job: Job, req: GenerationRequest) -> GenerationResult:
        checkpoint = self._checkpoint_for(req)
        job.progress.textinfo = f"loading {checkpoint.title}"
        model = self.models.get(checkpoint, req.vae)
        sampler = resolve(req.sampler_name, req.scheduler)
        first_seed = resolve_seed(req.seed)
        result = GenerationResult(req, checkpoint=checkpoint, sampler=sampler,
                                  job_timestamp=time.strftime("%Y%m%d%H%M%S"))
        measures = self.models.plan.for_request(req.width, req.height, req.batch_size)
        try:
            for batch_no in range(req.n_iter):
                job.start_batch(batch_no, req.n_iter)
                job.progress.textinfo = f"batch {batch_no + 1} of {req.n_iter}"
                seeds = [first_seed + batch_no * req.batch_size + i for i in range(req.batch_size)]

                def attempt(m: Measures, seeds=seeds) -> list[Image.Image]:
                    return self._sample(model, req, sampler, seeds, job, m)

                try:
                    images, measures = run_with_fallbacks(attempt, measures, len(seeds), self.models.device)
                except SkipBatch:
                    continue
                self._collect(result, req, images, seeds, measures)
        except Interrupted:
            result.interrupted = True
        if len(result.images) > 1:
            result.grid = make_grid(result.images)
            if req.save_images:
                result.grid_path = self.outputs.save_grid(result.grid, req.kind, result.infotexts[0])
        return result

    def _sample(self, model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                job: Job, measures: Measures) -> list[Image.Image]:
        """One batch under `measures`; with a batch split, its parts run one after another (same seeds)."""
        self.models.apply(measures)
        generate = generate_txt2img if req.kind == "txt2img" else generate_img2img
        part = -(-len(seeds) // measures.batch_split)
        images = []
        for start in range(0, len(seeds), part):
            images += generate(model, req, sampler, seeds[start : start + part], job.report_step)
        return images

    def _collect(self, result: GenerationResult, req: GenerationRequest, images: list[Image.Image],
                 seeds: list[int], measures: Measures) -> None:
        for image, seed in zip(images, seeds, strict=True):
            text = self.infotext(req, result, seed, measures)
            result.images.append(image)
            result.seeds.append(seed)
            result.infotexts.append(text)
            if req.save_images:
                result.paths.append(self.outputs.save_image(image, req.kind, seed, text))

    def infotext(self, req: GenerationRequest, result: GenerationResult, seed: int,
                 measures: Measures | None = None) -> str:
        checkpoint, vae = result.checkpoint, self.models.current_vae
        params: dict[str, object] = {
            "Steps": req.steps,
            "Sampler": result.sampler.sampler.name,
            "Schedule type": result.sampler.schedule,
            "CFG scale": req.cfg_scale,
            "Seed": seed,
            "Size": f"{req.width}x{req.height}",
            "Model hash": checkpoint.short_hash,
            "Model": checkpoint.model_name,
            "VAE hash": vae.short_hash if vae else None,
            "VAE": vae.name if vae else None,
            "Denoising strength": req.denoising_strength if req.kind == "img2img" else None,
            "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        }
        if req.is_inpainting:
            params["Mask blur"] = req.mask_blur
            if req.inpaint_full_res:
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = req.inpaint_full_res_padding
            params["Masked content"] = MASKED_CONTENT_LABELS[req.inpainting_fill]
            if req.inpainting_mask_invert:
                params["Mask mode"] = "Inpaint not masked"
        if measures is not None and measures.fallbacks:
            params["Memory fallback"] = " + ".join(measures.fallbacks)
        params["Version"] = VERSION
        return infotext.build(req.prompt, req.negative_prompt, params)
