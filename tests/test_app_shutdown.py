"""Ctrl+C / SIGTERM during a generation: the running job ends with what it made and its client gets it, waiting
jobs get a clear 503, and the process exits promptly with status 0 (a real signal to the real app)."""

import json
import signal
import threading
import time

import pytest
import requests

from tests.server import app_process

SLOW = {"prompt": "a cat", "steps": 150, "width": 128, "height": 128, "seed": 5, "sampler_name": "Euler"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_interrupts_answers_and_exits_cleanly(models_dir, tmp_path, signum):
    with app_process(models_dir, tmp_path / "outputs", "--api", "--ckpt", "sd1",
                     ready_path="/sdapi/v1/progress", log_dir=tmp_path) as (proc, base):
        api = base + "/sdapi/v1"
        answers = {}

        def post(name):
            answers[name] = requests.post(api + "/txt2img", json=SLOW, timeout=300)

        running = threading.Thread(target=post, args=("running",))
        running.start()
        _wait_for(lambda: requests.get(api + "/progress", timeout=10).json()["state"]["sampling_step"] >= 2)
        waiting = threading.Thread(target=post, args=("waiting",))
        waiting.start()
        _wait_for(lambda: requests.get(api + "/progress", timeout=10).json()["state"]["job_count"] >= 2)
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(20) == 0
        elapsed = time.monotonic() - started
        running.join(30)
        waiting.join(30)
    assert elapsed < 10
    first = answers["running"]
    assert first.status_code == 200 and json.loads(first.json()["info"])["interrupted"] is True
    assert len(first.json()["images"]) == 1
    assert answers["waiting"].status_code == 503 and "shutting down" in answers["waiting"].json()["detail"]
    log = next(tmp_path.glob("app-*.log")).read_text()
    assert "terminate called" not in log and "Traceback" not in log


def _wait_for(condition, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)
