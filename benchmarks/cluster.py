"""Throughput of 8 txt2img requests with one and two Ray workers on this machine, beside the in-process
server, and the per-job overhead of the Ray hop (a 1-worker cluster against the in-process run of the same
jobs). A local Ray head is started on loopback for the run (requirements-cluster.txt).

    python -m benchmarks.cluster [--jobs 8] [--steps 20] [--size 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backend.generation.requests import GenerationRequest
from backend.settings import Settings
from backend.wiring import build_service
from tests.fixtures import tiny_models
from tests.server import free_port

RAY = Path(sys.executable).parent / "ray"


def _requests(count: int, steps: int, size: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt="a lighthouse", negative_prompt="fog", steps=steps, width=size, height=size,
                              seed=100 + i, sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False)
            for i in range(count)]


def _run(settings: Settings, requests: list[GenerationRequest]) -> float:
    service = build_service(settings)
    try:
        service.generate(requests[0])  # warm-up: every worker's model loads before timing
        if service.cluster is not None:
            for _ in range(service.cluster.count):
                service.generate(requests[0])
        start = time.perf_counter()
        jobs = [service.submit(req) for req in requests]
        for job in jobs:
            job.wait()
        return time.perf_counter() - start
    finally:
        service.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    tiny_models.write_checkpoint(tiny_models.make_sd1(seed=1, width=64), work / "models" / "Stable-diffusion" /
                                 "sd1.safetensors")
    base = Settings(models_dir=work / "models", outputs_dir=work / "outputs", device="cpu", precision="fp32")
    requests = _requests(args.jobs, args.steps, args.size)
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cpus = os.cpu_count() or 2
    subprocess.run([str(RAY), "start", "--head", f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false",
                    "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--temp-dir={work / 'ray'}"],
                   check=True, env=env, capture_output=True)
    try:
        rows = [("in-process (baseline)", _run(base, requests))]
        for workers in (1, 2):
            cluster = dataclasses.replace(base, cluster_address=f"127.0.0.1:{port}", cluster_workers=workers)
            rows.append((f"Ray, {workers} worker{'s' if workers > 1 else ''}", _run(cluster, requests)))
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    baseline = rows[0][1]
    print(f"{args.jobs} jobs of {args.steps} steps at {args.size}x{args.size} (tiny SD 1.x), {cpus} CPUs")
    print(f"{'':24} {'s total':>8} {'jobs/min':>9} {'vs baseline':>12}")
    for name, seconds in rows:
        print(f"{name:24} {seconds:8.2f} {60 * args.jobs / seconds:9.1f} {baseline / seconds:11.2f}x")
    print(f"Ray hop per job (1 worker - in-process): {(rows[1][1] - baseline) / args.jobs:.3f} s")


if __name__ == "__main__":
    main()
