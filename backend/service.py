"""The generation service: the facade the UI and the REST API call. It checks requests, queues them on the
single worker (backend/runner.py runs them there), and answers the lists, options and queue questions."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.errors import Forbidden, InvalidRequest, ModelNotFound
from backend.generation import hires, sampling
from backend.generation.requests import GenerationRequest, validate
from backend.jobs import Job, JobQueue
from backend.model_manager import AUTOMATIC_VAE, NO_CHECKPOINT_MESSAGE, NO_VAE, ModelManager
from backend.options import IMPLEMENTED, Options
from backend.networks.hypernetworks import HypernetLibrary
from backend.networks.library import NetworkFile, NetworkLibrary
from backend.styles import Style, StyleLibrary
from backend.generation.results import GenerationResult
from backend.networks.apply import NetworkApplier
from backend.runner import MAX_KEPT_FOLDER_RESULTS, ExtrasJob, ExtrasResult, JobRunner
from backend.upscale.extras import (ExtrasRequest, check_picture as check_extras_picture, folder_pictures,
                                    open_picture, peak_size as upscale_peak_size, upscaler_factor)
from backend.upscale.extras import check as check_extras
from backend.upscale.models import UpscalerLibrary
from backend.upscale.resize import image_upscaler_names
from backend.prompts.embeddings import EmbeddingLibrary
from backend.prompts.extra_networks import parse_tags
from backend.prompts.parse import split_and
from backend.prompts.schedule import prompt_schedule
from backend.loading.build import build_tokenizer
from backend.loading.detect import Family, TextEncoderSpec
from backend.prompts.encode import PromptEncoder, encoder_for, text_width
from backend.outputs import ImageFormat, OutputWriter
from backend.registry import ModelFile
from backend.samplers import SAMPLERS, SCHEDULES, resolve
from backend import scripts
from backend.scripts import img2img_batch, xyz_grid
from backend.settings import Settings
from backend.control import preprocess as control_preprocess
from backend.control.models import ControlNetLibrary

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class QueueStatus:
    """What /progress and the UI show: the running job (or the caller's own job), how many wait, and how many
    jobs are ahead of the caller's (0: it runs)."""

    current: Job | None
    waiting: int
    ahead: int = 0


class GenerationService:
    """The facade the UI and the REST API call. They never reach into the queue, registry or model cache."""

    def __init__(self, settings: Settings, models: ModelManager, outputs: OutputWriter,
                 options: Options | None = None, embeddings: EmbeddingLibrary | None = None,
                 networks: NetworkLibrary | None = None, upscalers: UpscalerLibrary | None = None,
                 hypernetworks: HypernetLibrary | None = None, styles: StyleLibrary | None = None,
                 controlnets: ControlNetLibrary | None = None, cluster=None):
        self.settings = settings
        self.embeddings = embeddings or EmbeddingLibrary([])
        self.networks = networks or NetworkLibrary([])
        self.upscalers = upscalers or UpscalerLibrary([])
        self.hypernetworks = hypernetworks or HypernetLibrary([])
        self.styles = styles or StyleLibrary(settings.outputs_dir.parent / "styles.csv")
        self.controlnets = controlnets or ControlNetLibrary(settings.controlnet_folder)
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
        self.runner = JobRunner(settings, models, outputs, self.options, self.embeddings,
                                NetworkApplier(self.networks, self.hypernetworks), self.upscalers, self.resources,
                                self.controlnets, on_unloadable=self._forget_unloadable_default, prepare=self.prepare)
        self.cluster = cluster  # backend.cluster.WorkerPool: jobs run on a Ray cluster's workers
        self.queue = JobQueue(self._run_job, workers=cluster.count if cluster is not None else 1)

    # ---------------------------------------------------------------- generation (any thread)

    def submit(self, request: GenerationRequest, owner: str = "") -> Job:
        """Check the request now (bad input fails fast, before queueing), then queue it for `owner` (an account,
        browser session or API client: the queue is fair between owners, each may have a limited number waiting)."""
        return self.queue.submit("generate", self.prepare(request), owner, self.settings.max_queued_per_user)

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """Every check of a request, and the request ready to run: its styles merged into the prompts, its
        checkpoint's title fixed (one without a checkpoint gets the one selected now, so a later switch does not
        change what it runs on). A script's jobs are prepared one by one when they are made (their styles merged
        then), and each is checked here first."""
        if request.styles and request.script is None:  # as A1111: the prompts (and infotext) carry the styles
            prompt, negative = self.styles.apply(request.prompt, request.negative_prompt, list(request.styles),
                                                 max_chars=self.settings.limits.max_prompt_chars)
            request = dataclasses.replace(request, prompt=prompt, negative_prompt=negative, styles=())
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
        if request.refiner_checkpoint:
            try:
                refiner = self.registry.find_checkpoint(request.refiner_checkpoint)
            except ModelNotFound as err:
                raise InvalidRequest("refiner_checkpoint", str(err)) from None
            request = dataclasses.replace(request, refiner_checkpoint=refiner.title)
        checkpoint = self.registry.find_checkpoint(request.checkpoint) if request.checkpoint \
            else self._require_selected()
        if request.vae not in (None, AUTOMATIC_VAE, NO_VAE):
            self.registry.find_vae(request.vae)
        request = dataclasses.replace(request, checkpoint=checkpoint.title)
        if request.control_units:
            self._check_control_units(request)
        if request.script is not None:
            if scripts.is_local_only(request.script):
                self.require_local(request.script.title)
            scripts.check(request.script, request, self._script_checks())
        return request

    def _check_control_units(self, request: GenerationRequest) -> None:
        """Each unit's model is known and it has a picture to work on (its own, or img2img's)."""
        for index, unit in enumerate(request.control_units):
            field = f"controlnet.args[{index}]"
            try:
                self.controlnets.find(unit.model, f"{field}.model")
            except ModelNotFound as err:
                raise InvalidRequest(f"{field}.model", str(err).split(": ", 1)[-1]) from None
            if unit.image is None and request.init_image is None:
                raise InvalidRequest(f"{field}.image", "ControlNet is enabled but no input image is given")
        if request.inpaint_full_res and request.mask is not None:
            raise InvalidRequest("inpaint_full_res", "ControlNet with 'Only masked' inpainting is not supported "
                                                     "yet: use the whole picture")

    def _script_checks(self) -> scripts.ScriptChecks:
        limits = self.settings.limits
        return scripts.ScriptChecks(scripts.SizeLimit(limits.max_extras_pixels, self._upscale_peak), self.prepare,
                                    max_jobs=limits.max_script_jobs,
                                    grid_megapixels=int(self.options.get("img_max_size_mp") or 200))

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit(request).wait(timeout)

    # ---------------------------------------------------------------- models

    def checkpoints(self) -> list[ModelFile]:
        return self.registry.checkpoints

    def vaes(self) -> list[ModelFile]:
        return self.registry.vaes

    def refresh_models(self) -> None:
        self.registry.refresh()
        self._refresh_workers()

    def _refresh_workers(self) -> None:
        """A refresh reaches every cluster worker (each keeps its own lists of the shared models folder)."""
        if self.cluster is not None:
            self.cluster.broadcast("refresh")

    def outputs_folder(self, tab: str, owner: str = "") -> Path:
        """Where a tab's images go (for the UI's "open folder" on this machine): the owner's own folder with
        private outputs."""
        kind = {"txt2img": "txt2img", "extras": "extras"}.get(tab, "img2img")
        return self.runner.outputs_for(owner).root / f"{kind}-images"

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
        self._refresh_workers()

    # ---------------------------------------------------------------- LoRA networks

    def loras(self) -> list[NetworkFile]:
        return self.networks.all()

    def refresh_loras(self) -> None:
        self.networks.refresh()
        self.hypernetworks.refresh()
        self._refresh_workers()

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

    # ---------------------------------------------------------------- ControlNet

    def controlnet_models(self, refresh: bool = False) -> list[str]:
        """"None", then the ControlNet files' titles (the extension's model list)."""
        if refresh:
            self.controlnets.refresh()
            self._refresh_workers()
        return ["None", *self.controlnets.titles()]

    def controlnet_unit_count(self) -> int:
        return max(1, min(10, int(self.options.get("control_net_unit_count") or 3)))

    def controlnet_detect(self, module: str, image: Image.Image, processor_res: float = -1,
                          threshold_a: float = -1, threshold_b: float = -1,
                          mask: Image.Image | None = None) -> Image.Image:
        """A preprocessor's map of a picture (the extension's /controlnet/detect and the UI's preview); numpy
        and OpenCV only, so it runs on the caller's thread. Inpaint maps carry the mask as transparency."""
        pre = control_preprocess.find(module)
        res, a, b = pre.settle(processor_res, threshold_a, threshold_b)
        picture = np.asarray(image.convert("RGB"))
        if pre.takes_mask:
            alpha = np.zeros(picture.shape[:2], np.uint8) if mask is None else np.asarray(
                mask.convert("L").resize(image.size))
            picture = np.concatenate([picture, alpha[:, :, None]], axis=2)
        detected = control_preprocess.run(pre, picture, res, a, b, seed=0)
        return Image.fromarray(control_preprocess.shown_map(pre, detected))

    # ---------------------------------------------------------------- scripts

    def script_catalog(self, tab: str) -> scripts.Catalog:
        """What the scripts' controls offer on a tab (A1111's choices lists)."""
        return scripts.Catalog(
            tab=tab, upscalers=tuple(self.image_upscaler_names()), hires_upscalers=tuple(self.upscaler_names()),
            samplers=tuple(s.name for s in SAMPLERS), schedulers=tuple(SCHEDULES),
            checkpoints=tuple(c.title for c in self.registry.checkpoints),
            vaes=tuple(v.name for v in self.registry.vaes), styles=tuple(s.name for s in self.styles.all()))

    def script_names(self) -> dict:
        return scripts.api_names()

    def script_info(self) -> list[dict]:
        return scripts.api_info({tab: self.script_catalog(tab) for tab in scripts.TABS})

    def script_titles(self, tab: str) -> tuple[str, ...]:
        return scripts.titles(tab)

    def script_arguments(self, title: str, tab: str = "img2img") -> list[scripts.ScriptArg]:
        """A script's controls (A1111's order), for the UI to build."""
        return scripts.arguments(title, self.script_catalog(tab))

    def plot_axis_choices(self, tab: str) -> list[list[str] | None]:
        """X/Y/Z plot: per axis type (A1111's index on the tab), the names its values dropdown offers, or None
        for an axis typed as text."""
        return xyz_grid.axis_choices(self.script_catalog(tab))

    def script(self, name: str, args: list | None = None, tab: str = "img2img") -> scripts.ScriptRun:
        """A script of a tab by A1111's title (any case), with A1111's positional script_args."""
        return scripts.parse(name, args, self.script_catalog(tab))

    def extras(self, images: list[Image.Image], req: ExtrasRequest, save: bool = False,
               owner: str = "") -> ExtrasResult:
        """Upscale pictures (the Extras tab and API) on the worker that owns the device. Every size the work
        implies is checked first."""
        limits = self.settings.limits
        check_extras(req, self.upscalers, limits.max_extras_pixels)
        for image in images:
            check_extras_picture(image.size, req, self.upscalers, limits.max_extras_pixels)
        return self.queue.submit("extras", ExtrasJob(list(images), req, save), owner,
                                 self.settings.max_queued_per_user).wait()

    def extras_from_folder(self, input_dir: str, output_dir: str, req: ExtrasRequest,
                           keep_images: bool = True, owner: str = "") -> ExtrasResult:
        """Extras' batch from a folder on this machine, only when served to this machine alone (checked here, on
        every call): every picture in `input_dir`, read one at a time by the worker, saved under its own name in
        `output_dir` (empty: outputs/extras-images, numbered), never over an existing file. Results are kept for
        the caller only with `keep_images`, and at most MAX_KEPT_FOLDER_RESULTS of them."""
        self.require_local("Batch from Directory")
        limits = self.settings.limits
        check_extras(req, self.upscalers, limits.max_extras_pixels)
        pictures, warnings = folder_pictures(Path(input_dir.strip()).expanduser(), limits.max_upload_pixels)
        usable = []
        for path, size in pictures:
            try:
                check_extras_picture(size, req, self.upscalers, limits.max_extras_pixels)
                usable.append(path)
            except InvalidRequest as err:
                warnings.append(f"skipped {path.name}: {err}")
        if not usable:
            raise InvalidRequest("input_dir", "has no picture that can be upscaled this way")
        target = Path(output_dir.strip()).expanduser() if output_dir.strip() else None
        job = ExtrasJob(usable, req, True, target, keep=MAX_KEPT_FOLDER_RESULTS if keep_images else 0)
        result = self.queue.submit("extras", job, owner, self.settings.max_queued_per_user).wait()
        result.warnings[:0] = warnings
        return result

    def img2img_batch(self, request: GenerationRequest, input_dir: str, output_dir: str = "",
                      mask_dir: str = "") -> GenerationRequest:
        """A1111's img2img Batch, only when served to this machine alone (checked here and again when it is
        submitted): `request` made for every picture of `input_dir`, read one at a time by the worker, with the
        mask of the same file name from `mask_dir` (else its first); results saved in `output_dir` under the
        pictures' names (empty: img2img's folder). Returns the request to submit."""
        self.require_local("img2img Batch")
        limit = self.settings.limits.max_upload_pixels
        pictures, _ = folder_pictures(Path(input_dir.strip()).expanduser(), limit)
        masks: tuple[Path, ...] = ()
        if mask_dir.strip():
            try:
                found, _ = folder_pictures(Path(mask_dir.strip()).expanduser(), limit)
            except InvalidRequest as err:
                raise InvalidRequest("mask_dir", err.message) from None
            masks = tuple(path for path, _ in found)
        output = Path(output_dir.strip()).expanduser() if output_dir.strip() else None
        settings = img2img_batch.BatchSettings(tuple(path for path, _ in pictures), masks, output, limit)
        first = open_picture(pictures[0][0], limit)
        return dataclasses.replace(request, init_image=first, mask=None,
                                   script=scripts.ScriptRun(img2img_batch.TITLE, settings, "img2img"))

    def _upscale_peak(self, size: tuple[int, int], upscaler: str, scale: float) -> tuple[int, int]:
        return upscale_peak_size(size, scale, upscaler_factor(upscaler, scale, self.upscalers))

    def require_local(self, feature: str) -> None:
        """Features that name server folders exist only for a server served to this machine alone."""
        if not self.settings.local_only:
            raise Forbidden(f"{feature} reads or writes folders on the server, so it is only available when the "
                            "server is used on that machine alone (not with --listen, --share, --server-name or "
                            "--hide-ui-dir-config)")

    def open_outputs_folder(self, tab: str, owner: str = "") -> Path | None:
        """Open a tab's outputs folder (the owner's, with private outputs) in this machine's file manager
        (A1111's "Open folder"); None when there is no file manager (the caller says where the images are)."""
        self.require_local("Open folder")
        folder = self.outputs_folder(tab, owner)
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

    def status(self, owner: str | None = None) -> QueueStatus:
        """The running job and how many wait; for an `owner`, their own job (running, else their next one) and
        how many jobs are ahead of it."""
        running, pending = self.queue.running(), self.queue.pending()
        if owner is None:
            return QueueStatus(running[0] if running else None, len(pending))
        mine = next((job for job in running if job.owner == owner), None)
        if mine is not None:
            return QueueStatus(mine, len(pending))
        own = next((job for job in pending if job.owner == owner), None)
        ahead = (pending.index(own) + len(running)) if own is not None else 0
        return QueueStatus(own, len(pending), ahead)

    def own_jobs(self, owner: str) -> tuple[Job | None, list[tuple[Job, int]]]:
        """The owner's running job (or None) and their waiting jobs, each with how many jobs are ahead of it."""
        running, pending = self.queue.running(), self.queue.pending()
        mine = next((job for job in running if job.owner == owner), None)
        return mine, [(job, index + len(running)) for index, job in enumerate(pending) if job.owner == owner]

    def cancel_waiting(self, owner: str) -> int:
        """Cancel the owner's waiting jobs (never anyone else's); how many."""
        _, waiting = self.own_jobs(owner)
        for job, _ in waiting:
            self.queue.cancel(job.id)
        return len(waiting)

    def queue_position(self, job: Job) -> int:
        return self.queue.position(job)

    def interrupt(self, job_id: str | None = None, owner: str | None = None) -> bool:
        """Interrupt the running job, or with `job_id` only that job (queued or running); with `owner`, only a
        job of theirs. As A1111 with its interrupt_after_current option (on by default), a job of several
        batches finishes the batch being made first; a single batch stops at the current step, keeping what it
        has reached."""
        job = self.queue.find(job_id) if job_id is not None else self._running_job(owner)
        if job is None or (owner is not None and job.owner != owner):
            return False
        several = job.kind == "generate" and job.payload.n_iter > 1
        if several and self.options.get("interrupt_after_current") and job.state.value == "running":
            job.stop_after_batch()
        else:
            job.cancel()
        return True

    def skip(self, job_id: str | None = None, owner: str | None = None) -> bool:
        """Skip the running job's current batch; with `job_id`, only if that job is the one running; with
        `owner`, only if it is theirs."""
        current = self.queue.find(job_id) if job_id is not None else self._running_job(owner)
        if current is None or current not in self.queue.running() or \
                (owner is not None and current.owner != owner):
            return False
        current.skip()
        return True

    def _running_job(self, owner: str | None) -> Job | None:
        """The owner's running job (without an owner: the first running one)."""
        running = self.queue.running()
        return next((job for job in running if owner is None or job.owner == owner), None)

    def image_format(self) -> ImageFormat:
        """The pictures' file format now (A1111's samples_format and its quality options)."""
        return self.outputs.format()

    def preview(self, job: Job) -> Image.Image | None:
        """The job's latest live preview, as the worker made it (reading it touches no device tensor)."""
        return job.progress.preview

    def shutdown(self) -> None:
        self.queue.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def cluster_status(self) -> list[dict]:
        """The cluster's workers (name, busy, pid, host, device, jobs done); empty without a cluster."""
        return self.cluster.status() if self.cluster is not None else []

    # ---------------------------------------------------------------- the worker

    def _run_job(self, job: Job):
        if job.kind == "load":
            checkpoint, previous = job.payload
            try:
                if self.cluster is not None:  # every worker loads it
                    self.cluster.preload(checkpoint.title, self.options.snapshot())
                else:
                    self.models.get(checkpoint)
            except Exception:
                with self._lock:  # a model that cannot load does not stay selected
                    if self._selected == checkpoint.title:
                        self._selected = previous
                raise
            return checkpoint
        if self.cluster is not None:  # a worker runs it with the options of now; the server saves what it made
            return self.cluster.run(job, self.options.snapshot(), self.runner.outputs_for(job.owner))
        if job.kind == "extras":
            return self.runner.extras(job)
        return self.runner.generate(job)
