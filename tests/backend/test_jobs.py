import threading
import time

import numpy as np
import pytest

from backend.errors import Interrupted, ModelNotFound
from backend.generation.requests import GenerationRequest
from backend.jobs import JobQueue, JobState
from tests.conftest import build_backend


def _request(**kw):
    base = dict(prompt="p", steps=3, width=64, height=64, seed=1, checkpoint="sd1.safetensors", save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def test_jobs_run_in_order_and_a_failure_does_not_stop_the_worker():
    order = []

    def run(job):
        order.append(job.payload)
        if job.payload == "bad":
            raise RuntimeError("boom")
        return job.payload * 2

    q = JobQueue(run)
    jobs = [q.submit("t", p) for p in ("a", "bad", "c")]
    assert jobs[2].wait(10) == "cc"
    assert order == ["a", "bad", "c"]
    assert jobs[1].state is JobState.FAILED
    with pytest.raises(RuntimeError):
        jobs[1].wait(1)
    q.stop()


def test_queue_position_and_cancelling_a_queued_job():
    gate = threading.Event()

    def run(job):
        gate.wait(10)
        return job.payload

    q = JobQueue(run)
    first, second, third = (q.submit("t", i) for i in range(3))
    time.sleep(0.1)
    assert (q.position(first), q.position(second), q.position(third)) == (0, 1, 2)
    assert q.cancel(second.id)
    gate.set()
    assert third.wait(10) == 2
    assert second.state is JobState.INTERRUPTED
    q.stop()


def test_progress_is_reported_and_interrupt_keeps_finished_batches(service):
    seen = []
    job = service.submit(_request(steps=40, n_iter=3))
    deadline = time.time() + 60
    while time.time() < deadline and not job.finished:
        p = job.progress
        seen.append((p.batch_no, p.step, p.steps))
        if p.batch_no == 1 and p.step >= 2:
            service.interrupt()
            break
        time.sleep(0.005)
    result = job.wait(60)
    assert job.state is JobState.INTERRUPTED
    # The finished first batch, and the second decoded from the step it reached (as A1111 does).
    assert result.interrupted and len(result.images) == 2 and result.seeds == [1, 2]
    assert any(steps == 40 and step > 0 for _, step, steps in seen)
    # The worker goes on with the next job.
    assert len(service.generate(_request()).images) == 1


def test_skip_moves_on_to_the_next_batch(service):
    job = service.submit(_request(steps=40, n_iter=2))
    while not job.finished and not (job.progress.batch_no == 0 and job.progress.step >= 1):
        time.sleep(0.005)
    service.skip()
    result = job.wait(60)
    assert job.state is JobState.DONE
    assert result.seeds == [2]  # the first batch (seed 1) was skipped


def test_empty_models_folder_says_where_to_put_checkpoints(tmp_path):
    (tmp_path / "models").mkdir()
    svc = build_backend(tmp_path / "models", tmp_path / "outputs")
    try:
        with pytest.raises(ModelNotFound, match="Stable-diffusion"):
            svc.submit(GenerationRequest(prompt="p"))
    finally:
        svc.shutdown()


def test_interrupted_before_start_is_reported(service):
    job = service.queue.submit("generate", _request())
    job.cancel()
    with pytest.raises(Interrupted):
        job.wait(60)


def test_interrupt_with_several_batches_finishes_the_current_one(service):
    """A1111's interrupt_after_current: the batch being made completes (no half-denoised image), then stop."""
    job = service.submit(_request(steps=20, n_iter=3))
    while not job.finished and not (job.progress.batch_no == 0 and job.progress.step >= 2):
        time.sleep(0.005)
    service.interrupt()
    result = job.wait(60)
    assert result.interrupted and result.seeds == [1] and job.state is JobState.INTERRUPTED
    full = service.generate(_request(steps=20))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(full.images[0]))  # complete, not partial


def test_interrupted_images_are_saved_only_with_save_incomplete_images(service):
    def interrupted_run():
        job = service.submit(_request(steps=40, save_images=True))
        while not job.finished and job.progress.step < 2:
            time.sleep(0.005)
        service.interrupt()
        return job.wait(60)

    assert interrupted_run().paths == []
    service.set_options({"save_incomplete_images": True})
    try:
        result = interrupted_run()
        assert result.interrupted and len(result.paths) == 1 and result.paths[0].is_file()
    finally:
        service.set_options({"save_incomplete_images": False})


def test_the_queue_is_fair_between_owners():
    """Round-robin across owners, in order within one: alice's many jobs do not hold back bob's or carol's."""
    gate, order = threading.Event(), []

    def run(job):
        gate.wait(10)
        order.append(job.payload)

    q = JobQueue(run)
    first = q.submit("t", "a0", "alice")
    while q.current is None:
        time.sleep(0.01)
    jobs = [q.submit("t", name, owner) for name, owner in
            (("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob"))]
    assert [j.payload for j in q.pending()] == ["b1", "c1", "a1", "b2", "a2", "a3"]
    assert q.position(jobs[3]) == 1 and q.position(jobs[0]) == 3 and q.position(first) == 0
    gate.set()
    jobs[2].wait(10)
    assert order == ["a0", "b1", "c1", "a1", "b2", "a2", "a3"]
    q.stop()


def test_an_owner_may_have_only_so_many_jobs_waiting():
    from backend.errors import TooManyJobs

    gate = threading.Event()
    q = JobQueue(lambda job: gate.wait(10))
    q.submit("t", 0, "alice", limit=2)
    while q.current is None:
        time.sleep(0.01)
    q.submit("t", 1, "alice", limit=2)
    q.submit("t", 2, "alice", limit=2)
    with pytest.raises(TooManyJobs, match="2 jobs waiting"):
        q.submit("t", 3, "alice", limit=2)
    q.submit("t", 4, "bob", limit=2)  # another owner is not held to alice's count
    gate.set()
    q.stop()


def test_interrupt_skip_and_progress_are_the_callers_own(service):
    job = service.submit(_request(steps=40, width=256, height=256), "bob")
    while job.progress.step < 1 and not job.finished:
        time.sleep(0.01)
    assert not service.interrupt(owner="alice") and not service.skip(owner="alice")
    assert not service.interrupt(job.id, owner="alice")  # nor by naming bob's job
    assert service.status("alice").current is None and service.status("bob").current is job
    queued = service.submit(_request(), "alice")
    assert service.status("alice").current is queued and service.status("alice").ahead == 1
    assert service.interrupt(owner="bob")
    assert job.wait(60).interrupted and not queued.wait(60).interrupted


def test_private_outputs_go_to_each_accounts_folder(models_dir, tmp_path):
    svc = build_backend(models_dir, tmp_path / "outputs", private_outputs=True)
    try:
        alice = svc.submit(_request(save_images=True), "alice").wait(60).paths[0]
        odd = svc.submit(_request(save_images=True), "../bob").wait(60).paths[0]
        assert alice.relative_to(tmp_path / "outputs").parts[:2] == ("alice", "txt2img-images")
        assert odd.relative_to(tmp_path / "outputs").parts[0].startswith("user-")  # never a path out of outputs
        assert svc.outputs_folder("txt2img", "alice") == tmp_path / "outputs" / "alice" / "txt2img-images"
        from PIL import Image

        from backend.upscale.extras import ExtrasRequest
        svc.extras([Image.new("RGB", (8, 8))], ExtrasRequest(upscaler_1="Nearest"), save=True, owner="alice")
        assert list((tmp_path / "outputs" / "alice" / "extras-images").glob("*.png"))  # Extras too
    finally:
        svc.shutdown()


def test_the_api_answers_too_many_waiting_jobs_with_429():
    from backend.api.routes import _status_of
    from backend.errors import TooManyJobs

    assert _status_of(TooManyJobs("you have 50 jobs waiting")) == 429
