"""Start the real app (python app.py ...) on a free loopback port for HTTP and browser tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(models_dir: Path, outputs_dir: Path, *flags: str, ready_path: str = "/", log_dir: Path | None = None):
    with app_process(models_dir, outputs_dir, *flags, ready_path=ready_path, log_dir=log_dir) as (_, base):
        yield base


@contextlib.contextmanager
def app_process(models_dir: Path, outputs_dir: Path, *flags: str, ready_path: str = "/",
                log_dir: Path | None = None):
    """The running app's process and base URL."""
    port = free_port()
    cmd = [sys.executable, "app.py", "--port", str(port), "--models-dir", str(models_dir), "--outputs-dir",
           str(outputs_dir), "--styles-file", str((log_dir or outputs_dir.parent) / "styles.csv"),
           "--ui-settings-file", str((log_dir or outputs_dir.parent) / "config.json"), "--device", "cpu",
           "--precision", "fp32", *flags]
    log = open((log_dir or outputs_dir.parent) / f"app-{port}.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, base + ready_path, log.name)
        yield proc, base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_ready(proc: subprocess.Popen, url: str, log_name: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{Path(log_name).read_text()[-3000:]}")
        try:
            status = requests.get(url, timeout=2).status_code
            if status < 500 and status != 404:  # 404: the server is up but not all routes are mounted yet
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"app did not start in {timeout}s:\n{Path(log_name).read_text()[-3000:]}")
