"""The generation service: validates requests, queues them on the single worker, runs them, saves outputs."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from backend import infotext
from backend.errors import CheckpointError, Forbidden, Interrupted, InvalidRequest, ModelNotFound
from backend.generation import hires, sampling
from backend.generation.img2img import prepare_img2img
from backend.generation.preview import latent_preview
from backend.generation.requests import (MASKED_CONTENT_LABELS, GenerationRequest, MaskedContent, hires_target,
                                         check_prompt_chunks, resolve_seed, validate)
from backend.generation.tiling import seamless
from backend.generation.txt2img import prepare_txt2img
from backend.grid import make_grid
from backend.jobs import Job, JobQueue, SkipBatch
from backend.loading.loader import LoadedModel
from backend.memory.fallback import decode_with_fallbacks, run_with_fallbacks
from backend.memory.policy import Measures
from backend.model_manager import AUTOMATIC_VAE, NO_CHECKPOINT_MESSAGE, NO_VAE, ModelManager
from backend.options import IMPLEMENTED, Options
from backend.networks.hypernetworks import HypernetLibrary, HypernetPatcher
from backend.networks.library import NetworkFile, NetworkLibrary
from backend.styles import Style, StyleLibrary
from backend.upscale.extras import (ExtrasRequest, check_picture as check_extras_picture, folder_pictures,
                                    open_picture, peak_size as upscale_peak_size, picture_size, run_extras,
                                    upscaler_factor)
from backend.upscale.extras import check as check_extras
from backend.upscale.models import UpscalerLibrary
from backend.upscale.resize import image_upscaler_names, upscale_by
from backend.networks.patch import NetworkPatcher, WantedNetwork
from backend.prompts.embeddings import EmbeddingLibrary
from backend.prompts.extra_networks import LORA_KINDS, parse_tags
from backend.prompts.parse import split_and
from backend.prompts.schedule import prompt_schedule
from backend.loading.build import build_tokenizer
from backend.loading.detect import Family, TextEncoderSpec
from backend.prompts.encode import PromptEncoder, encoder_for, text_width
from backend.outputs import OutputWriter, read_infotext
from backend.registry import ModelFile
from backend.samplers import ResolvedSampler, hires_infotext_schedule, infotext_schedule, resolve
from backend import scripts
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
    vae: ModelFile | None = None  # the first pass's VAE file (None: the checkpoint's own), as A1111 records it
    sampler: ResolvedSampler | None = None
    interrupted: bool = False
    job_timestamp: str = ""
    warnings: list[str] = field(default_factory=list)  # shown to the user: the images are fine, something else not
    embeddings: list = field(default_factory=list)  # textual-inversion embeddings the prompts used
    networks: list = field(default_factory=list)  # LoRAs merged for this job (WantedNetwork)
    hypernetworks: list = field(default_factory=list)  # (Hypernetwork, multiplier) used for this job

    @property
    def gallery(self) -> list[Image.Image]:
        """What a gallery shows: the grid first for batches, then each image."""
        return ([self.grid] if self.grid is not None else []) + self.images


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


@dataclass(frozen=True)
class QueueStatus:
    """What /progress and the UI show: the running job (if any) and how many wait."""

    current: Job | None
    waiting: int


@dataclass
class _Denoised:
    """One part of a batch after sampling: latents to decode (or ready images) and how to finish them."""

    work: sampling.BatchWork
    latents: torch.Tensor | None
    interrupted: bool = False


class GenerationService:
    """The facade the UI and the REST API call. They never reach into the queue, registry or model cache."""

    def __init__(self, settings: Settings, models: ModelManager, outputs: OutputWriter,
                 options: Options | None = None, embeddings: EmbeddingLibrary | None = None,
                 networks: NetworkLibrary | None = None, upscalers: UpscalerLibrary | None = None,
                 hypernetworks: HypernetLibrary | None = None, styles: StyleLibrary | None = None):
        self.settings = settings
        self.embeddings = embeddings or EmbeddingLibrary([])
        self.networks = networks or NetworkLibrary([])
        self.upscalers = upscalers or UpscalerLibrary([])
        self.hypernetworks = hypernetworks or HypernetLibrary([])
        self.styles = styles or StyleLibrary(settings.outputs_dir.parent / "styles.csv")
        self.resources = sampling.Resources(self.embeddings, self.upscalers)
        self.models = models
        self.registry = models.registry
        self.outputs = outputs
        self.options = options or Options()
        self._lock = threading.Lock()
        # what the user chose (--ckpt, else the model saved in the settings); plain requests use it
        self._selected: str | None = settings.default_checkpoint or self.options.snapshot().get("sd_model_checkpoint")
        self._implicit_choice = False  # True when _selected was picked by _require_selected, not by the user
        self._unloadable: set[Path] = set()
        self._counting_tokenizer = None
        self.queue = JobQueue(self._run_job)

    # ---------------------------------------------------------------- generation (any thread)

    def submit(self, request: GenerationRequest) -> Job:
        """Check the request now (bad input fails fast, before queueing), then queue it. A request without a
        checkpoint gets the one selected now, so a later switch does not change what it runs on."""
        if request.styles:  # as A1111: the prompts (and their infotext) carry the styles' text
            prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, list(request.styles),
                                                 max_chars=self.settings.limits.max_prompt_chars)
            request = dataclasses.replace(request, prompt=prompt, negative_prompt=negative)
        validate(request, self.settings.limits)
        resolve(request.sampler_name, request.scheduler)
        if request.enable_hr and request.hr_upscaler is not None:
            hires.check_upscaler(request.hr_upscaler, self.upscalers)
        if request.enable_hr and request.hr_checkpoint:
            try:
                hr_checkpoint = self.registry.find_checkpoint(request.hr_checkpoint)
            except ModelNotFound as err:
                raise InvalidRequest("hr_checkpoint_name", str(err)) from None
            request = dataclasses.replace(request, hr_checkpoint=hr_checkpoint.title)
        if request.script is not None and (request.init_image is None or request.mask is not None):
            raise InvalidRequest("script_name", f"{request.script.title} runs on img2img's picture, without a mask")
        if request.script is not None:
            scripts.check(request.script, request, scripts.SizeLimit(self.settings.limits.max_extras_pixels,
                                                                      self._upscale_peak))
        checkpoint = self.registry.find_checkpoint(request.checkpoint) if request.checkpoint \
            else self._require_selected()
        if request.vae not in (None, AUTOMATIC_VAE, NO_VAE):
            self.registry.find_vae(request.vae)
        return self.queue.submit("generate", dataclasses.replace(request, checkpoint=checkpoint.title))

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit(request).wait(timeout)

    # ---------------------------------------------------------------- models

    def checkpoints(self) -> list[ModelFile]:
        return self.registry.checkpoints

    def vaes(self) -> list[ModelFile]:
        return self.registry.vaes

    def refresh_models(self) -> None:
        self.registry.refresh()

    def outputs_folder(self, tab: str) -> Path:
        """Where a tab's images go (for the UI's "open folder" on this machine)."""
        kind = {"txt2img": "txt2img", "extras": "extras"}.get(tab, "img2img")
        return self.outputs.root / f"{kind}-images"

    def no_checkpoint_message(self) -> str:
        """What to tell a user whose checkpoint folder is empty (the folder's name, never its path)."""
        return NO_CHECKPOINT_MESSAGE.format(folder=self.checkpoint_folder_name())

    def checkpoint_folder_name(self) -> str:
        """The checkpoint folder's name (never an absolute server path)."""
        return self.registry.checkpoint_dir.name

    def select_checkpoint(self, name: str) -> Job:
        """Make `name` the model plain requests use, and load it (the returned job ends when it is loaded)."""
        checkpoint = self.registry.find_checkpoint(name)
        with self._lock:
            previous, self._selected, self._implicit_choice = self._selected, checkpoint.title, False
        return self.queue.submit("load", (checkpoint, previous))

    def current_checkpoint(self) -> ModelFile | None:
        """The selected checkpoint (what the next plain request uses), else the loaded one, else the first."""
        try:
            return self._require_selected()
        except ModelNotFound:
            return None

    def _require_selected(self) -> ModelFile:
        """The model plain requests use. When none was chosen (no --ckpt, no saved setting), the first
        checkpoint that has not failed to load becomes the choice, so that a request with its own model
        (override_settings) never becomes everyone's model."""
        with self._lock:
            selected = self._selected
        if selected:
            try:
                return self.registry.find_checkpoint(selected)
            except ModelNotFound:
                log.warning("the selected checkpoint %r is gone; using the first one", selected)
        usable = [c for c in self.registry.checkpoints if c.path not in self._unloadable]
        if not usable:
            return self.models.default_checkpoint()  # raises ModelNotFound with the folder's name
        with self._lock:
            if self._selected == selected:
                self._selected, self._implicit_choice = usable[0].title, True
        return usable[0]

    def _forget_unloadable_default(self, checkpoint: ModelFile) -> None:
        """A checkpoint chosen implicitly that cannot be loaded stops being the default (the next one is tried
        by the next request); one the user chose stays chosen, and its error is what they see."""
        with self._lock:
            if self._implicit_choice and self._selected == checkpoint.title:
                self._unloadable.add(checkpoint.path)
                self._selected = None

    def prompt_token_count(self, prompt: str) -> tuple[int, int]:
        """A1111's token counter: the longest variant of the prompt (editing, alternation, AND parts), without
        extra-network tags, in tokens (embeddings as their vectors); and the next multiple of 75."""
        model = self.models.loaded_model
        if model is not None:
            encoder = encoder_for(model, "Original", self.embeddings)
        else:  # no model yet: the shipped tokenizer (every SD model's vocabulary) and every embedding
            encoder = PromptEncoder(Family.SD1, [self._tokenizer()], [], torch.device("cpu"),
                                    embeddings=self.embeddings.all())
        text = parse_tags(prompt).text
        counts = [sum(len(c.tokens) for c in encoder.chunks(variant)) for part, _ in split_and(text)
                  for _, variant in prompt_schedule(part, 20)]
        used = max(counts, default=0)
        return used, max(1, -(-used // 75)) * 75

    def _tokenizer(self):
        with self._lock:
            if self._counting_tokenizer is None:
                self._counting_tokenizer = build_tokenizer(TextEncoderSpec("", "clip", {}, False, "<|endoftext|>"))
            return self._counting_tokenizer

    # ---------------------------------------------------------------- styles

    def prompt_styles(self) -> list[Style]:
        self.styles.reload()
        return self.styles.all()

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> None:
        self.styles.save(Style(name.strip(), prompt, negative_prompt))

    def apply_styles(self, prompt: str, negative: str, names: list[str]) -> tuple[str, str]:
        return self.styles.apply(prompt, negative, names, max_chars=self.settings.limits.max_prompt_chars)

    # ---------------------------------------------------------------- embeddings

    def embedding_lists(self) -> tuple[dict, dict]:
        """(usable with the loaded model, skipped because they do not fit it); all usable when none is loaded."""
        model = self.models.loaded_model
        if model is None:
            return self.embeddings.all(), {}
        return self.embeddings.split_by_fit(text_width(model))

    def refresh_embeddings(self) -> None:
        self.embeddings.refresh()

    # ---------------------------------------------------------------- LoRA networks

    def loras(self) -> list[NetworkFile]:
        return self.networks.all()

    def refresh_loras(self) -> None:
        self.networks.refresh()
        self.hypernetworks.refresh()

    def hypernetwork_files(self) -> dict:
        return self.hypernetworks.names()

    # ---------------------------------------------------------------- upscalers

    def upscaler_files(self) -> list:
        return self.upscalers.all()

    def upscaler_names(self) -> list[str]:
        return hires.upscaler_names(self.upscalers)

    def image_upscaler_names(self) -> list[str]:
        """A1111's upscaler list (None, Lanczos, Nearest, then the models): what SD upscale and Extras use."""
        return image_upscaler_names(self.upscalers)

    # ---------------------------------------------------------------- scripts

    def script_names(self) -> dict:
        return scripts.api_names()

    def script_info(self) -> list[dict]:
        return scripts.api_info(self.image_upscaler_names())

    def script_arguments(self, title: str) -> list[scripts.ScriptArg]:
        """A script's controls (A1111's order), for the UI to build."""
        return scripts.arguments(title, self.image_upscaler_names())

    def script(self, name: str, args: list | None = None) -> scripts.ScriptRun:
        """An img2img script by A1111's title (any case), with A1111's positional script_args."""
        return scripts.parse(name, args, self.image_upscaler_names())

    def extras(self, images: list[Image.Image], req: ExtrasRequest, save: bool = False) -> ExtrasResult:
        """Upscale pictures (the Extras tab and API) on the worker that owns the device. Every size the work
        implies is checked first."""
        limits = self.settings.limits
        check_extras(req, self.upscalers, limits.max_extras_pixels)
        for image in images:
            check_extras_picture(image.size, req, self.upscalers, limits.max_extras_pixels)
        return self.queue.submit("extras", ExtrasJob(list(images), req, save)).wait()

    def extras_from_folder(self, input_dir: str, output_dir: str, req: ExtrasRequest,
                           keep_images: bool = True) -> ExtrasResult:
        """Extras' batch from a folder on this machine, only when served to this machine alone (checked here, on
        every call): every picture in `input_dir`, read one at a time by the worker, saved under its own name in
        `output_dir` (empty: outputs/extras-images, numbered), never over an existing file. Results are kept for
        the caller only with `keep_images`, and at most MAX_KEPT_FOLDER_RESULTS of them."""
        self.require_local("Batch from Directory")
        limits = self.settings.limits
        check_extras(req, self.upscalers, limits.max_extras_pixels)
        paths, warnings = folder_pictures(Path(input_dir.strip()).expanduser(), limits.max_upload_pixels)
        usable = []
        for path in paths:
            try:
                check_extras_picture(picture_size(path, limits.max_upload_pixels), req, self.upscalers,
                                     limits.max_extras_pixels)
                usable.append(path)
            except (InvalidRequest, OSError) as err:
                warnings.append(f"skipped {path.name}: {err}")
        if not usable:
            raise InvalidRequest("input_dir", "has no picture that can be upscaled this way")
        target = Path(output_dir.strip()).expanduser() if output_dir.strip() else None
        job = ExtrasJob(usable, req, True, target, keep=MAX_KEPT_FOLDER_RESULTS if keep_images else 0)
        result = self.queue.submit("extras", job).wait()
        result.warnings[:0] = warnings
        return result

    def _upscale_peak(self, size: tuple[int, int], upscaler: str, scale: float) -> tuple[int, int]:
        return upscale_peak_size(size, scale, upscaler_factor(upscaler, scale, self.upscalers))

    def require_local(self, feature: str) -> None:
        """Features that name server folders exist only for a server served to this machine alone."""
        if not self.settings.local_only:
            raise Forbidden(f"{feature} reads or writes folders on the server, so it is only available when the "
                            "server is used on that machine alone (not with --listen, --share, --server-name or "
                            "--hide-ui-dir-config)")

    def open_outputs_folder(self, tab: str) -> Path | None:
        """Open a tab's outputs folder in this machine's file manager (A1111's "Open folder"); None when there
        is no file manager (the caller says where the images are)."""
        self.require_local("Open folder")
        folder = self.outputs_folder(tab)
        folder.mkdir(parents=True, exist_ok=True)
        opener = shutil.which("xdg-open") or shutil.which("open")
        if opener is None:
            return None
        subprocess.Popen([opener, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return folder

    # ---------------------------------------------------------------- options

    def get_options(self) -> dict:
        values = self.options.snapshot()
        current = self.current_checkpoint()
        values["sd_model_checkpoint"] = current.title if current else None
        values["sd_checkpoint_hash"] = current.sha256 if current and current.sha256 else ""
        return values

    def set_options(self, updates: dict) -> dict:
        """Type-checked update. Returns what could not take effect: unknown names (not stored) and known
        options this project does not implement (stored, no effect)."""
        known, unknown = self.options.check(updates)
        self._refuse_frozen(known)
        if known.get("sd_model_checkpoint"):
            self.select_checkpoint(str(known["sd_model_checkpoint"])).wait()
            known["sd_model_checkpoint"] = self.current_checkpoint().title
        if known.get("sd_vae") not in (None, AUTOMATIC_VAE, NO_VAE):
            self.registry.find_vae(str(known["sd_vae"]))
        value = known.get("CLIP_stop_at_last_layers")
        if value is not None and not 1 <= value <= 12:
            raise InvalidRequest("CLIP_stop_at_last_layers", f"must be 1..12, got {value}")
        self.options.update(known)
        report = {}
        if unknown:
            report["ignored"] = unknown
        not_implemented = sorted(k for k in known if k not in IMPLEMENTED)
        if not_implemented:
            report["not_implemented"] = not_implemented
        return report

    def _refuse_frozen(self, known: dict) -> None:
        """--freeze-settings / --freeze-specific-settings, as A1111: such a change is refused, not ignored."""
        frozen = sorted(known) if self.settings.freeze_all_settings else \
            sorted(k for k in known if k in self.settings.frozen_settings)
        if frozen:
            raise Forbidden(f"settings are frozen on this server (--freeze-settings): {', '.join(frozen)} "
                            "cannot be changed")

    # ---------------------------------------------------------------- queue control

    def status(self) -> QueueStatus:
        current = self.queue.current
        return QueueStatus(current, len(self.queue.pending()))

    def queue_position(self, job: Job) -> int:
        return self.queue.position(job)

    def interrupt(self, job_id: str | None = None) -> bool:
        """Interrupt the running job, or with `job_id` only that job (queued or running). As A1111 with its
        interrupt_after_current option (on by default), a job of several batches finishes the batch being made
        first; a single batch stops at the current step, keeping what it has reached."""
        job = self.queue.find(job_id) if job_id is not None else self.queue.current
        if job is None:
            return False
        several = job.kind == "generate" and job.payload.n_iter > 1
        if several and self.options.get("interrupt_after_current") and job.state.value == "running":
            job.stop_after_batch()
        else:
            job.cancel()
        return True

    def skip(self, job_id: str | None = None) -> bool:
        """Skip the running job's current batch; with `job_id`, only if that job is the one running."""
        current = self.queue.current
        if current is None or (job_id is not None and current.id != job_id):
            return False
        current.skip()
        return True

    def preview(self, job: Job) -> Image.Image | None:
        """A quick look at the job's latest latents (no VAE decode)."""
        latents, family = job.progress.latents, self.models.loaded_family
        if latents is None or family is None:
            return None
        return latent_preview(latents[0], family)

    def shutdown(self) -> None:
        self.queue.stop()

    # ---------------------------------------------------------------- the worker

    def _run_job(self, job: Job):
        if job.kind == "extras":
            return self._run_extras(job, job.payload)
        if job.kind == "load":
            checkpoint, previous = job.payload
            try:
                self.models.get(checkpoint)
            except Exception:
                with self._lock:  # a model that cannot load does not stay selected
                    if self._selected == checkpoint.title:
                        self._selected = previous
                raise
            return checkpoint
        return self._generate(job, job.payload)

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
        result.count = index + 1 if work.sources else 0
        return result

    def _generate(self, job: Job, req: GenerationRequest) -> GenerationResult:
        checkpoint = self.registry.find_checkpoint(req.checkpoint)
        job.progress.textinfo = f"loading {checkpoint.title}"
        try:
            model = self.models.get(checkpoint, req.vae)
        except CheckpointError:
            self._forget_unloadable_default(checkpoint)
            raise
        sampler = resolve(req.sampler_name, req.scheduler)
        req = dataclasses.replace(req, seed=resolve_seed(req.seed), subseed=resolve_seed(req.subseed))
        result = GenerationResult(req, checkpoint=checkpoint, vae=self.models.current_vae, sampler=sampler,
                                  job_timestamp=time.strftime("%Y%m%d%H%M%S"))
        req = self._apply_networks(model, req, result)  # the prompt loses its <lora:...> tags for encoding
        self._check_prompts(model, req, result)
        width, height = hires_target(req).final_size if req.enable_hr and req.kind == "txt2img" else (req.width,
                                                                                                     req.height)
        measures = self.models.plan.for_request(width, height, req.batch_size)
        with seamless([model.unet, model.vae], req.tiling):
            if req.script is not None:
                self._run_script(job, model, req, sampler, result, measures)
            else:
                self._run_batches(job, model, req, sampler, result, measures)
        if len(result.images) > 1:
            result.grid = make_grid(result.images)
            if req.save_images and not result.interrupted:
                result.grid_path = self._save(result, lambda: self.outputs.save_grid(result.grid, req.kind,
                                                                                     result.infotexts[0]))
        return result

    def _run_batches(self, job: Job, model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler,
                     result: GenerationResult, measures: Measures) -> None:
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
                return self._denoise(model, req, sampler, seeds, job, m, result)

            try:
                parts, measures = run_with_fallbacks(attempt, measures, len(seeds), self.models.device)
            except SkipBatch:
                continue
            images, measures = self._decode(model, parts, measures)
            interrupted = any(part.interrupted for part in parts)
            keep_partial = bool(self.options.get("save_incomplete_images"))  # A1111's option, off by default
            self._collect(result, req, images, seeds[: len(images)], measures, save=not interrupted or keep_partial)
            if interrupted:
                result.interrupted = True
                break

    def _run_script(self, job: Job, model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler,
                    result: GenerationResult, measures: Measures) -> None:
        """An img2img script: its jobs run here, one after another, like batches; its pictures are the result,
        saved with the first job's parameters (as A1111 does)."""
        def process(sub_req: GenerationRequest) -> GenerationResult:
            validate(sub_req, self.settings.limits)
            sub = dataclasses.replace(result, request=sub_req, images=[], infotexts=[], seeds=[], paths=[])
            self._run_batches(job, model, sub_req, sampler, sub, measures)
            return sub

        def report(text: str) -> None:
            job.progress.textinfo = text
            job.check_interrupt()

        tools = scripts.ScriptTools(process, lambda image, name, scale: upscale_by(image, name, scale,
                                                                                          self.upscalers), report)
        try:
            output = scripts.run(req.script, req, tools)
        except Interrupted:
            result.interrupted = True
            return
        result.interrupted = output.interrupted
        keep_partial = bool(self.options.get("save_incomplete_images"))
        for image, seed in zip(output.images, output.seeds, strict=True):
            result.images.append(image)
            result.seeds.append(seed)
            result.infotexts.append(output.infotext)
            if req.save_images and (not output.interrupted or keep_partial):
                path = self._save(result, lambda image=image, seed=seed: self.outputs.save_image(
                    image, req.kind, seed, output.infotext))
                if path is not None:
                    result.paths.append(path)

    def _apply_networks(self, model: LoadedModel, req: GenerationRequest,
                        result: GenerationResult) -> GenerationRequest:
        """Merge the prompt's LoRAs into the model (or restore it when there are none); unknown names and kinds
        are reported, and the image is made without them, as A1111 does."""
        parsed = parse_tags(req.prompt)
        wanted, hypernets = [], []
        for tag in () if req.disable_extra_networks else parsed.tags:  # A1111: tags removed, not applied
            if tag.kind == "hypernet":
                hypernet = self.hypernetworks.load(tag.name)
                if hypernet is None:
                    result.warnings.append(f"Hypernetwork not found: {tag.name}")
                else:
                    hypernets.append((hypernet, tag.te))
                continue
            if tag.kind not in LORA_KINDS:
                result.warnings.append(f"{tag.text}: {tag.kind} networks are not supported; the tag was ignored")
                continue
            found = self.networks.find(tag.name, dict(req.network_hashes).get(tag.name))
            if found is None:
                result.warnings.append(f"Lora not found: {tag.name}")
                continue
            wanted.append(WantedNetwork(found, tag.name, tag.te, tag.unet, tag.dyn))
        result.networks, result.hypernetworks = wanted, hypernets
        self._patch_networks(model, result)
        return dataclasses.replace(req, prompt=parsed.text)

    def _patch_networks(self, model: LoadedModel, result: GenerationResult) -> None:
        """Merge the job's LoRAs and hypernetworks into `model` (or restore it when there are none)."""
        if model.network_patcher is None:
            model.network_patcher, model.hypernet_patcher = NetworkPatcher(), HypernetPatcher()
        warnings = model.network_patcher.apply(model, result.networks, self.networks)
        result.warnings += [w for w in warnings if w not in result.warnings]
        model.hypernet_patcher.apply(model.unet, result.hypernetworks)

    def _check_prompts(self, model: LoadedModel, req: GenerationRequest, result: GenerationResult) -> None:
        """Length limits, and which embeddings the prompts use (for `TI hashes`)."""
        encoder = encoder_for(model, req.emphasis, self.embeddings)
        used = {}
        for name in ("prompt", "negative_prompt"):
            text = getattr(req, name)
            check_prompt_chunks(len(encoder.chunks(text)), name, self.settings.limits.max_prompt_chunks)
            used.update({e.name: e for e in encoder.embeddings_used(text)})
        result.embeddings = list(used.values())

    def _denoise(self, model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
                 job: Job, measures: Measures, result: GenerationResult) -> list[_Denoised]:
        """Sample one batch under `measures`; with a batch split, its parts run one after another (same seeds).
        An interrupt keeps what the current part has reached, as A1111 does."""
        resources = self.resources
        if req.enable_hr and req.hr_checkpoint:  # each batch's first pass on the request's model again
            model = self.models.get(self.registry.find_checkpoint(req.checkpoint), req.vae)
            resources = dataclasses.replace(resources, switch_model=lambda title: self._switch_for_hires(
                title, req, result, len(seeds)))
        self.models.apply(measures)
        prepare = prepare_txt2img if req.kind == "txt2img" else prepare_img2img
        size = -(-len(seeds) // measures.batch_split)
        parts = []
        for start in range(0, len(seeds), size):
            work = prepare(model, req, sampler, seeds[start : start + size], resources)
            if work.ready_images is not None:
                parts.append(_Denoised(work, None))
                continue
            job.progress.latents = None
            try:
                parts.append(_Denoised(work, work.denoise(job)))
            except Interrupted:
                if job.progress.latents is None:
                    raise
                parts.append(_Denoised(work, job.progress.latents.float(), interrupted=True))
                break
        return parts

    def _switch_for_hires(self, title: str, req: GenerationRequest, result: GenerationResult,
                          batch: int) -> LoadedModel:
        """Hires fix's checkpoint: activate it with the job's networks and measures for the final size."""
        model = self.models.get(self.registry.find_checkpoint(title), req.vae)
        self._patch_networks(model, result)
        self.models.apply(self.models.plan.for_request(*hires_target(req).final_size, batch))
        return model

    def _decode(self, model: LoadedModel, parts: list[_Denoised],
                measures: Measures) -> tuple[list[Image.Image], Measures]:
        images = []
        for part in parts:
            if part.latents is None:
                images += part.work.ready_images
                continue
            decoder = part.work.decode_model or model
            pixels, measures = decode_with_fallbacks(
                lambda dtype, latents=part.latents, decoder=decoder: sampling.decode_latents(decoder, latents, dtype),
                decoder.vae.dtype, measures, self.models.apply, self.models.device)
            images += part.work.finish(sampling.to_pil(pixels))
        return images, measures

    def _collect(self, result: GenerationResult, req: GenerationRequest, images: list[Image.Image],
                 seeds: list[int], measures: Measures, save: bool) -> None:
        for image, seed in zip(images, seeds, strict=True):
            text = self.infotext(result.request, result, seed, measures)
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

    def infotext(self, req: GenerationRequest, result: GenerationResult, seed: int,
                 measures: Measures | None = None) -> str:
        checkpoint, vae = result.checkpoint, result.vae  # the job's own record, whatever is loaded now
        hires_fix = req.enable_hr and req.kind == "txt2img"
        params: dict[str, object] = {
            "Steps": req.steps,
            "Sampler": result.sampler.sampler.name,
            "Schedule type": infotext_schedule(result.sampler.sampler, req.scheduler),
            "CFG scale": req.cfg_scale,
            "Seed": seed,
            "Size": f"{req.width}x{req.height}",
            "Model hash": checkpoint.short_hash,
            "Model": checkpoint.model_name,
            "VAE hash": vae.short_hash if vae else None,
            "VAE": vae.name if vae else None,
            "Variation seed": req.subseed + (seed - req.seed) if req.subseed_strength else None,
            "Variation seed strength": req.subseed_strength or None,
            "Seed resize from": f"{req.seed_resize_from_w}x{req.seed_resize_from_h}"
            if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0 else None,
            "Denoising strength": req.denoising_strength if req.kind == "img2img" or hires_fix else None,
            "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
            "Eta": req.eta if req.eta is not None and result.sampler.sampler.noise and req.eta != 1.0 else None,
            "Eta DDIM": req.eta if req.eta and result.sampler.sampler.uses_ddim_eta else None,
            **_sigma_options(req, result.sampler.sampler),
            "ENSD": req.eta_noise_seed_delta if req.eta_noise_seed_delta and result.sampler.sampler.ancestral
            else None,
            "RNG": req.rng_source if req.rng_source != "GPU" else None,
            "Tiling": "True" if req.tiling else None,
        }
        if hires_fix:
            hr_checkpoint = self.registry.find_checkpoint(req.hr_checkpoint) if req.hr_checkpoint else None
            params.update(_hires_params(req, hr_checkpoint))
        if req.is_inpainting:
            blur_x, blur_y = req.mask_blurs  # A1111 writes one blur only, and only when they agree
            params["Mask blur"] = blur_x if blur_x == blur_y and blur_x > 0 else None
            if req.inpaint_full_res:
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = req.inpaint_full_res_padding
            if req.inpainting_fill != MaskedContent.ORIGINAL:  # A1111 names only the others
                params["Masked content"] = MASKED_CONTENT_LABELS[req.inpainting_fill]
            if req.inpainting_mask_invert:
                params["Mask mode"] = "Inpaint not masked"
        if result.hypernetworks:
            params["Hypernet"] = ", ".join(h.name for h, _ in result.hypernetworks)
            params["Hypernet hash"] = ", ".join(h.short_hash for h, _ in result.hypernetworks)
        if result.networks:
            params["Lora hashes"] = ", ".join(f"{w.typed_name}: {w.network.short_hash}" for w in result.networks)
        if result.embeddings:
            params["TI hashes"] = ", ".join(f"{e.name}: {e.short_hash}" for e in result.embeddings)
        if req.emphasis != "Original" and _uses_brackets(req):
            params["Emphasis"] = req.emphasis
        if req.kind == "img2img" and req.initial_noise_multiplier != 1.0:
            params["Noise multiplier"] = req.initial_noise_multiplier
        if req.s_min_uncond > 0:
            params["NGMS"] = req.s_min_uncond
            params["NGMS all steps"] = "True" if req.s_min_uncond_all else None
        params.update(req.extra_params)
        if measures is not None and measures.fallbacks:
            params["Memory fallback"] = " + ".join(measures.fallbacks)
        params["Version"] = VERSION
        return infotext.build(req.prompt, req.negative_prompt, params)


def _uses_brackets(req: GenerationRequest) -> bool:
    """A1111 writes `Emphasis` only when a prompt could use it."""
    return any("(" in text or "[" in text for text in (req.prompt, req.negative_prompt))


def _sigma_options(req: GenerationRequest, sampler) -> dict:
    """A1111's `Sigma churn/tmin/tmax/noise` infotext keys: written when the sampler uses them and they are not
    the defaults."""
    churns = sampler.k_function in ("euler", "heun", "dpm_2")
    return {"Sigma churn": req.s_churn if churns and req.s_churn else None,
            "Sigma tmin": req.s_tmin if churns and req.s_tmin else None,
            "Sigma tmax": req.s_tmax if churns and req.s_tmax else None,
            "Sigma noise": req.s_noise if (churns or sampler.noise) and req.s_noise != 1.0 else None}


def _hires_params(req: GenerationRequest, hr_checkpoint: ModelFile | None) -> dict:
    """A1111's hires fix infotext keys, in its order (StableDiffusionProcessingTxt2Img.init)."""
    params: dict[str, object] = {}
    if hr_checkpoint is not None:  # A1111's short title: the name and the short hash
        short_hash = hr_checkpoint.short_hash
        params["Hires checkpoint"] = f"{hr_checkpoint.model_name} [{short_hash}]" if short_hash \
            else hr_checkpoint.model_name
    if req.hr_sampler_name and req.hr_sampler_name != req.sampler_name:
        params["Hires sampler"] = req.hr_sampler_name
    if req.hr_prompt and req.hr_prompt != req.prompt:
        params["Hires prompt"] = req.hr_prompt
    if req.hr_negative_prompt and req.hr_negative_prompt != req.negative_prompt:
        params["Hires negative prompt"] = req.hr_negative_prompt
    first = resolve(req.sampler_name, req.scheduler).sampler
    second = resolve(req.hr_sampler_name or req.sampler_name, req.hr_scheduler or req.scheduler).sampler
    params["Hires schedule type"] = hires_infotext_schedule(first, req.scheduler, second,
                                                            req.hr_scheduler or req.scheduler)
    if req.hr_resize_x == 0 and req.hr_resize_y == 0:
        params["Hires upscale"] = req.hr_scale
    else:
        params["Hires resize"] = f"{req.hr_resize_x}x{req.hr_resize_y}"
    if req.hr_second_pass_steps:
        params["Hires steps"] = req.hr_second_pass_steps
    if req.hr_upscaler is not None:
        params["Hires upscaler"] = req.hr_upscaler
    return params
