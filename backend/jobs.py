"""One worker thread owns the device. UI and API jobs share its queue; each job reports progress and can be
cancelled on its own; a failing job never stops the worker."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import torch
from PIL import Image

from backend.errors import BackendError, Interrupted, ServiceStopping, TooManyJobs

log = logging.getLogger(__name__)


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class SkipBatch(Exception):
    """Raised inside sampling when the user skips the current image batch: the job goes on with the next."""


@dataclass
class Progress:
    step: int = 0
    steps: int = 0
    batch_no: int = 0  # 0-based index of the batch being sampled
    batch_count: int = 1
    started_at: float | None = None
    latents: torch.Tensor | None = None  # the latest denoised estimate: what an interrupt keeps
    preview: Image.Image | None = None  # the latest live preview, made by the worker
    preview_step: int = -1  # the step it shows
    textinfo: str = ""
    job_no: int = 0  # a script's jobs (X/Y/Z cells): which one runs, of how many
    job_count: int = 1

    @property
    def fraction(self) -> float:
        if not self.steps:
            return min(1.0, self.job_no / max(1, self.job_count))
        within = min(1.0, (self.batch_no + self.step / self.steps) / max(1, self.batch_count))
        return min(1.0, (self.job_no + within) / max(1, self.job_count))

    def eta_seconds(self, now: float | None = None) -> float | None:
        if self.started_at is None or self.fraction <= 0:
            return None
        elapsed = (now or time.monotonic()) - self.started_at
        return elapsed / self.fraction - elapsed


class Job:
    def __init__(self, job_id: str, kind: str, payload: Any, owner: str = ""):
        self.id = job_id
        self.kind = kind
        self.payload = payload
        self.owner = owner  # the account (or browser session, or API client) that submitted it
        self.state = JobState.QUEUED
        self.progress = Progress()
        self.result: Any = None
        self.error: BaseException | None = None
        self.created_at = time.time()
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._stop_after_batch = threading.Event()
        self._skip = threading.Event()
        self._callbacks_lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    # -- called from the worker while the job runs
    def report_step(self, step: int, steps: int, latents: torch.Tensor | None = None) -> None:
        self.progress.step, self.progress.steps = step, steps
        if latents is not None:
            self.progress.latents = latents
        if self._cancel.is_set():
            raise Interrupted("interrupted by the user")
        if self._skip.is_set():
            self._skip.clear()
            raise SkipBatch()

    def check_interrupt(self) -> None:
        """For long work between sampling steps (text encoding, decoding): stop here if the user interrupted."""
        if self._cancel.is_set():
            raise Interrupted("interrupted by the user")

    def start_batch(self, batch_no: int, batch_count: int) -> None:
        self.progress.batch_no, self.progress.batch_count = batch_no, batch_count
        self.progress.step, self.progress.preview_step = 0, -1
        if self._cancel.is_set() or self._stop_after_batch.is_set():
            raise Interrupted("interrupted by the user")

    @property
    def interrupted(self) -> bool:
        return self._cancel.is_set() or self._stop_after_batch.is_set()

    # -- called from anywhere
    def cancel(self) -> None:
        self._cancel.set()

    def stop_after_batch(self) -> None:
        """Let the batch being made finish, then stop (A1111's interrupt_after_current with several batches)."""
        self._stop_after_batch.set()

    @property
    def stopping(self) -> bool:
        return self._stop_after_batch.is_set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def take_skip(self) -> bool:
        """A skip asked for since the last call (for relaying it to a cluster worker)."""
        if self._skip.is_set():
            self._skip.clear()
            return True
        return False

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def add_done_callback(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (from the worker thread) when the job ends, or now if it already has."""
        with self._callbacks_lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def wait(self, timeout: float | None = None) -> Any:
        """The job's result; raises the job's error if it failed."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.id} still running")
        if self.error is not None:
            raise self.error
        return self.result

    def _finish(self, state: JobState) -> None:
        self.state = state
        self.progress.latents = None
        with self._callbacks_lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a waiter's failure must not stop the worker
                log.exception("done-callback of %s failed", self.id)


class JobQueue:
    """One worker (or, on a cluster, one dispatcher per cluster worker), and a queue that is fair between
    owners: the next job is the oldest of the owner served longest ago (round-robin across owners, in order
    within one), so one owner's many jobs never hold back another's single job."""

    def __init__(self, run: Callable[[Job], Any], workers: int = 1):
        self._run = run
        self._ids = itertools.count(1)
        self._ticks = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[Job] = []  # in submission order
        self._last_served: dict[str, int] = {}  # owner -> tick of their last job start
        self._running: list[Job] = []  # in the order they started
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, name=f"generation-worker-{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    def submit(self, kind: str, payload: Any, owner: str = "", limit: int | None = None) -> Job:
        """Queue a job for `owner`; with `limit`, an owner with that many jobs waiting is refused."""
        with self._lock:
            if self._stopping:
                raise ServiceStopping("the server is shutting down")
            if limit is not None and sum(job.owner == owner for job in self._pending) >= limit:
                raise TooManyJobs(f"you have {limit} jobs waiting already (the limit per user); wait for one to "
                                  "finish or cancel one")
            job = Job(f"job-{next(self._ids)}", kind, payload, owner)
            self._pending.append(job)
            self._wake.notify()
        return job

    @property
    def current(self) -> Job | None:
        """The job that started first of those running (the only one, without a cluster)."""
        with self._lock:
            return self._running[0] if self._running else None

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running)

    def pending(self) -> list[Job]:
        """The waiting jobs, in the order they will run."""
        with self._lock:
            return self._serving_order()

    def position(self, job: Job) -> int:
        """0 while running, 1 if it is next, ...; -1 once finished."""
        with self._lock:
            if job in self._running:
                return 0
            order = self._serving_order()
            return order.index(job) + 1 if job in order else -1

    def find(self, job_id: str) -> Job | None:
        with self._lock:
            jobs = [*self._pending, *self._running]
        return next((j for j in jobs if j.id == job_id), None)

    def cancel(self, job_id: str) -> bool:
        job = self.find(job_id)
        if job is None:
            return False
        job.cancel()
        return True

    def interrupt(self) -> Job | None:
        """Interrupt the job running now (read once, under the lock, so it cannot change in between)."""
        job = self.current
        if job is not None:
            job.cancel()
        return job

    def skip(self) -> Job | None:
        job = self.current
        if job is not None:
            job.skip()
        return job

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down: jobs still waiting fail with ServiceStopping (their callers get a clear answer), the
        running job is interrupted (it ends with what it has made), and the worker thread ends. New jobs are
        refused from now on."""
        with self._lock:
            self._stopping = True
            waiting, self._pending = self._pending, []
            running = list(self._running)
            self._wake.notify_all()
        for job in waiting:
            job.cancel()
            job.error = ServiceStopping("the server is shutting down; this job did not run")
            job._finish(JobState.FAILED)
        for job in running:
            job.cancel()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _serving_order(self) -> list[Job]:
        """The pending jobs as the worker will take them (called under the lock)."""
        served = dict(self._last_served)
        waiting, order = list(self._pending), []
        tick = max(served.values(), default=0)
        while waiting:
            job = self._next_of(waiting, served)
            waiting.remove(job)
            order.append(job)
            tick += 1
            served[job.owner] = tick
        return order

    @staticmethod
    def _next_of(waiting: list[Job], served: dict[str, int]) -> Job:
        """The oldest job of the owner served longest ago (never served: first)."""
        return min(waiting, key=lambda job: (served.get(job.owner, 0), waiting.index(job)))

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job = self._next_of(self._pending, self._last_served)
                self._pending.remove(job)
                self._last_served[job.owner] = next(self._ticks)
                self._running.append(job)
            try:
                self._execute(job)
            finally:
                with self._lock:
                    self._running.remove(job)

    def _execute(self, job: Job) -> None:
        if job.interrupted:
            job.error = Interrupted("cancelled before it started")
            job._finish(JobState.INTERRUPTED)
            return
        job.state = JobState.RUNNING
        job.progress.started_at = time.monotonic()
        try:
            job.result = self._run(job)
            job._finish(JobState.INTERRUPTED if job.interrupted else JobState.DONE)
        except BackendError as err:
            job.error = err
            job._finish(JobState.INTERRUPTED if isinstance(err, Interrupted) else JobState.FAILED)
        except Exception as err:  # noqa: BLE001 - the worker must survive any job
            log.exception("job %s failed", job.id)
            job.error = err
            job._finish(JobState.FAILED)
