"""More than one machine: the same server (UI, API, queue, accounts, outputs) runs its jobs on worker actors of
a Ray cluster (`--cluster-address HOST:PORT --workers N`). Each worker builds its own backend from the same
Settings (the same models folder, its own model cache) on one GPU, or on its share of the CPUs.

The queue stays in the server: each of its N dispatcher threads hands a job to a free worker and, while it
runs, relays progress and previews back and interrupt/skip forward. The worker saves nothing: it records what
the job would have saved, and the server replays those saves into its own outputs folder, so files, names and
infotexts are what a single-process server writes. A worker that dies mid-job is replaced, and its job is
retried once on another worker.

Ray is imported only here, and only when a cluster is asked for (requirements-cluster.txt)."""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from backend.errors import BackendError, WorkerLost
from backend.jobs import Job
from backend.settings import Settings

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.2  # how often a running job's progress is fetched and its interrupt/skip relayed
FREE_WORKER_WAIT_S = 300  # a job waits this long for a free (or replacement) worker before failing


class RecordingOutputs:
    """An OutputWriter stand-in for a worker: every save is recorded (with a placeholder path the job keeps
    in its result) for the server to replay into its real outputs folder."""

    def __init__(self, options=None):
        self.options = options
        self.saves: list[tuple[str, tuple, Path]] = []

    def for_owner(self, owner: str) -> RecordingOutputs:
        return self

    def format(self, grid: bool = False):
        from backend.outputs import ImageFormat

        return ImageFormat.from_options(self.options.get, grid) if self.options is not None else ImageFormat()

    def _record(self, method: str, *args) -> Path:
        placeholder = Path(f"pending-save-{len(self.saves)}")
        self.saves.append((method, args, placeholder))
        return placeholder

    def save_image(self, image, kind: str, seed: int, infotext: str) -> Path:
        return self._record("save_image", image, kind, seed, infotext)

    def save_extras(self, image, texts: dict) -> Path:
        return self._record("save_extras", image, texts)

    def save_named(self, image, folder: Path, stem: str, texts: dict) -> Path:
        return self._record("save_named", image, folder, stem, texts)

    def save_grid(self, image, kind: str, infotext: str, basename: str = "grid") -> Path:
        return self._record("save_grid", image, kind, infotext, basename)

    def take(self) -> list[tuple[str, tuple, Path]]:
        saves, self.saves = self.saves, []
        return saves


def replay_saves(saves: list[tuple[str, tuple, Path]], outputs, result: Any) -> None:
    """Write a worker's recorded saves with the server's OutputWriter and put the real paths in the result."""
    real: dict[Path, Path] = {}
    for method, args, placeholder in saves:
        try:
            real[placeholder] = getattr(outputs, method)(*args)
        except OSError as err:  # as the runner does: the pictures still go back, with a warning
            log.error("could not save an image: %s", err)
            warning = f"Images were not saved: {err.strerror or type(err).__name__}."
            if hasattr(result, "warnings") and warning not in result.warnings:
                result.warnings.append(warning)
    if hasattr(result, "paths"):
        result.paths = [real[p] for p in result.paths if p in real]
    if getattr(result, "grid_path", None) is not None:
        result.grid_path = real.get(result.grid_path)


def worker_settings(settings: Settings) -> Settings:
    """What a worker builds its backend from: the server's, without a cluster of its own, without a settings
    file (each job brings the options), saving nowhere (the server saves)."""
    scratch = Path(tempfile.mkdtemp(prefix="sd-worker-"))
    return dataclasses.replace(settings, cluster_address=None, cluster_workers=1, config_file=None,
                               outputs_dir=scratch / "outputs")


class GenerationWorker:
    """The worker actor's body (made a Ray actor by WorkerPool): a backend of its own, running one job at a
    time; progress, cancel and skip are answered while a job runs (a threaded actor)."""

    def __init__(self, settings: Settings, threads: int | None = None):
        import torch

        from backend.wiring import build_service

        if threads:
            torch.set_num_threads(threads)
        self.service = build_service(settings)
        self.outputs = RecordingOutputs(self.service.options)
        runner = self.service.runner
        runner.all_outputs = runner.outputs = self.outputs
        self.job: Job | None = None

    def info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.service.models.device)}

    def run(self, kind: str, payload: Any, owner: str, options: dict) -> tuple[Any, list]:
        self.service.options.update(options)
        job = Job("remote", kind, payload, owner)
        self.job = job
        try:
            if kind == "load":
                self.service.models.get(self.service.registry.find_checkpoint(payload))
                result = None
            elif kind == "extras":
                result = self.service.runner.extras(job)
            else:
                result = self.service.runner.generate(job)
            return result, self.outputs.take()
        finally:
            self.outputs.take()
            self.job = None

    def progress(self) -> dict | None:
        job = self.job
        if job is None:
            return None
        p = job.progress
        return {"step": p.step, "steps": p.steps, "batch_no": p.batch_no, "batch_count": p.batch_count,
                "textinfo": p.textinfo, "job_no": p.job_no, "job_count": p.job_count, "preview": p.preview,
                "preview_step": p.preview_step}

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def stop_after_batch(self) -> None:
        if self.job is not None:
            self.job.stop_after_batch()

    def skip(self) -> None:
        if self.job is not None:
            self.job.skip()

    def refresh(self) -> None:
        """New or removed files in the models folders (the server's refresh, passed on)."""
        self.service.refresh_models()
        self.service.refresh_loras()
        self.service.refresh_embeddings()
        self.service.controlnets.refresh()


@dataclasses.dataclass
class _Worker:
    actor: Any
    name: str
    info: dict = dataclasses.field(default_factory=dict)
    busy: bool = False
    jobs_done: int = 0


class WorkerPool:
    """The server's side: the worker actors, which of them are free, and running a job on one."""

    def __init__(self, settings: Settings):
        import ray

        self.ray = ray
        self.settings = settings
        self.count = max(1, settings.cluster_workers)
        ray.init(address=settings.cluster_address, namespace="sd-webui", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1",
                                           "TRANSFORMERS_OFFLINE": "1"}})
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) >= 1:
            self._options, self._threads = {"num_gpus": 1, "num_cpus": 1}, None
        else:
            share = max(1, int(resources.get("CPU", 1) // self.count))
            self._options, self._threads = {"num_cpus": share}, share
        self._actor_class = ray.remote(GenerationWorker).options(max_concurrency=4, max_restarts=0,
                                                                   **self._options)
        self._lock = threading.Lock()
        self._free: queue.Queue[_Worker] = queue.Queue()
        self._workers: list[_Worker] = []
        self._names = iter(range(1, 1_000_000))
        self._stopped = False
        starting = [self._start_worker() for _ in range(self.count)]
        for worker in starting:
            self._wait_ready(worker)
        log.info("cluster %s: %d workers (%s each)", settings.cluster_address, self.count, self._options)

    # ---------------------------------------------------------------- workers

    def _start_worker(self) -> _Worker:
        worker = _Worker(self._actor_class.remote(worker_settings(self.settings), self._threads),
                         f"worker-{next(self._names)}")
        with self._lock:
            self._workers.append(worker)
        return worker

    def _wait_ready(self, worker: _Worker) -> None:
        worker.info = self.ray.get(worker.actor.info.remote())
        self._free.put(worker)

    def _replace(self, dead: _Worker) -> None:
        """Forget a dead worker and start another in the background (its models load on first use)."""
        with self._lock:
            if dead in self._workers:
                self._workers.remove(dead)
        if self._stopped:
            return

        def start():
            try:
                self._wait_ready(self._start_worker())
            except Exception:  # noqa: BLE001 - the pool goes on with the workers it has
                log.exception("could not start a replacement worker")

        threading.Thread(target=start, name="start-worker", daemon=True).start()

    def status(self) -> list[dict]:
        with self._lock:
            workers = list(self._workers)
        return [{**w.info, "name": w.name, "ready": bool(w.info), "busy": w.busy, "jobs_done": w.jobs_done}
                for w in workers]

    # ---------------------------------------------------------------- jobs

    def run(self, job: Job, options: dict, outputs) -> Any:
        """Run `job` on a free worker; if that worker dies, once more on another. The result's saves are
        written with `outputs` (the job owner's OutputWriter)."""
        for attempt in (1, 2):
            worker = self._take_free()
            try:
                result, saves = self._run_on(worker, job, options)
            except self.ray.exceptions.RayActorError:
                log.error("%s died while running %s", worker.name, job.id)
                self._replace(worker)
                if attempt == 2:
                    raise WorkerLost("the worker running this job died twice; the job did not finish") from None
                job.progress.textinfo = "retrying on another worker"
                continue
            except BaseException:  # the job failed (a bad request, an interrupt): the worker is fine
                self._release(worker)
                raise
            self._release(worker)
            replay_saves(saves, outputs, result)
            return result
        raise WorkerLost("no worker could run this job")

    def _release(self, worker: _Worker) -> None:
        worker.busy = False
        worker.jobs_done += 1
        self._free.put(worker)

    def _take_free(self) -> _Worker:
        """A free worker that answers (one that died while idle is replaced, and the next free one taken)."""
        deadline = time.monotonic() + FREE_WORKER_WAIT_S
        while True:
            try:
                worker = self._free.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerLost("no generation worker is available in the cluster") from None
            try:
                self.ray.get(worker.actor.info.remote(), timeout=30)
            except (self.ray.exceptions.RayActorError, self.ray.exceptions.GetTimeoutError):
                log.error("%s stopped answering while idle; replacing it", worker.name)
                self._replace(worker)
                continue
            worker.busy = True
            return worker

    def _run_on(self, worker: _Worker, job: Job, options: dict) -> tuple[Any, list]:
        ref = worker.actor.run.remote(job.kind, job.payload, job.owner, options)
        relayed = set()
        while True:
            ready, _ = self.ray.wait([ref], timeout=POLL_S)
            if ready:
                break
            self._relay(worker, job, relayed)
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as err:
            cause = err.cause
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except self.ray.exceptions.UnserializableException as err:  # an error the server cannot rebuild
            raise BackendError(f"the worker failed: {str(err).splitlines()[0][:300]}") from None

    def _relay(self, worker: _Worker, job: Job, relayed: set) -> None:
        """Interrupt and skip go to the worker; its progress comes back to the job the server's callers see."""
        if job.cancelled and "cancel" not in relayed:
            worker.actor.cancel.remote()
            relayed.add("cancel")
        elif job.stopping and "stop" not in relayed:
            worker.actor.stop_after_batch.remote()
            relayed.add("stop")
        if job.take_skip():
            worker.actor.skip.remote()
        try:
            remote = self.ray.get(worker.actor.progress.remote(), timeout=5)
        except (self.ray.exceptions.GetTimeoutError, self.ray.exceptions.RayActorError):
            return
        if remote is None:
            return
        progress = job.progress
        for name in ("step", "steps", "batch_no", "batch_count", "textinfo", "job_no", "job_count"):
            setattr(progress, name, remote[name])
        if remote["preview"] is not None and remote["preview_step"] != progress.preview_step:
            progress.preview, progress.preview_step = remote["preview"], remote["preview_step"]

    def broadcast(self, method: str, *args) -> None:
        """Call `method` on every live worker and wait for all (a dead one is replaced)."""
        with self._lock:
            workers = list(self._workers)
        refs = [(w, getattr(w.actor, method).remote(*args)) for w in workers]
        for worker, ref in refs:
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                self._replace(worker)

    def preload(self, title: str, options: dict) -> None:
        """A checkpoint switch: every worker loads it (a worker that cannot reports the error)."""
        with self._lock:
            workers = list(self._workers)
        refs = [w.actor.run.remote("load", title, "", options) for w in workers]
        for ref in refs:
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as err:
                raise err.cause if isinstance(err.cause, BaseException) else err from None
            except self.ray.exceptions.RayActorError:
                pass  # replaced when it is next given a job

    def stop(self) -> None:
        self._stopped = True
        with self._lock:
            workers, self._workers = list(self._workers), []
        for worker in workers:
            try:
                self.ray.kill(worker.actor)
            except Exception:  # noqa: BLE001 - shutting down regardless
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.ray.is_initialized():
            self.ray.shutdown()
