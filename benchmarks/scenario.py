"""One benchmark run in a fresh process (so its peak memory is its own). Prints one JSON line.

    python -m benchmarks.scenario '{"engine": "ours", "checkpoint": ..., ...}'

engine "ours": our backend as app.py builds it (flags as in `flags`), timed cold load, warm-up, timed image,
and (with "switch_to") the time to switch back from the RAM cache. engine "diffusers": plain diffusers
`from_single_file` on the same file and its pipeline, in `dtype`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

PROMPT = "a lighthouse on a cliff at sunset, oil painting"
NEGATIVE = "blurry"


def timed(call, steps: int) -> float:
    _sync()
    started = time.perf_counter()
    call(steps)
    _sync()
    return time.perf_counter() - started


def measure(call, steps: int, repeats: int) -> dict:
    """Warm up (kernels chosen, compiled, packed), then time a short and a full run, each the best of `repeats`
    (other work on a shared machine only ever adds time). The difference per extra step is the time per step,
    with no hook inside the model to disturb it."""
    call(2)
    short = min(timed(call, 2) for _ in range(repeats))
    _reset_cuda_peak()
    full = min(timed(call, steps) for _ in range(repeats))
    return dict(image_s=full, step_s=(full - short) / (steps - 2) if steps > 2 else None)


def run_ours(spec: dict) -> dict:
    from app import build_service, parse_args, settings_from_args
    from backend.generation.requests import GenerationRequest

    checkpoint = Path(spec["checkpoint"])
    args = parse_args(["--models-dir", str(checkpoint.parent.parent), "--device", spec["device"], *spec["flags"]])
    service = build_service(settings_from_args(args))
    models = service.models
    started = time.perf_counter()
    model = models.get(models.registry.find_checkpoint(checkpoint.name))
    _sync()
    load_s = time.perf_counter() - started
    request = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=spec["size"], height=spec["size"], seed=1,
                   sampler_name="Euler", cfg_scale=7.0, save_images=False, checkpoint=checkpoint.name)
    times = measure(lambda steps: service.generate(GenerationRequest(steps=steps, **request)), spec["steps"],
                    spec["repeats"])
    result = dict(load_s=load_s, **times, plan=models.plan.describe(), dtype=str(model.dtype).removeprefix("torch."),
                  **_peaks())
    if spec.get("switch_to"):
        models.get(models.registry.find_checkpoint(spec["switch_to"]))
        started = time.perf_counter()
        models.get(models.registry.find_checkpoint(checkpoint.name))
        _sync()
        result["switch_s"] = time.perf_counter() - started
    service.shutdown()
    return result


def run_diffusers(spec: dict) -> dict:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if spec["arch"] == "sdxl" else StableDiffusionPipeline
    dtype = getattr(torch, spec["dtype"])
    extra = {} if spec["arch"] == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    started = time.perf_counter()
    pipe = cls.from_single_file(spec["checkpoint"], config=spec["config_dir"], local_files_only=True,
                                torch_dtype=dtype, **extra).to(spec["device"])
    _sync()
    load_s = time.perf_counter() - started
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=spec["size"], height=spec["size"], guidance_scale=7.0)
    times = measure(lambda steps: pipe(num_inference_steps=steps, generator=torch.Generator("cpu").manual_seed(1),
                                       **call), spec["steps"], spec["repeats"])
    return dict(load_s=load_s, **times, plan="diffusers defaults", dtype=spec["dtype"], **_peaks())


def _peaks() -> dict:
    """Peak RSS of this process so far (load + generation); peak CUDA memory since the last reset."""
    peaks = {"peak_rss_gb": _peak_rss_bytes() / 2**30}
    if torch.cuda.is_available():
        peaks["peak_vram_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return peaks


def _peak_rss_bytes() -> int:
    """VmHWM: this process's own high-water mark (ru_maxrss would carry the parent's peak over an exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_cuda_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(sys.argv[1])
    result = run_ours(spec) if spec["engine"] == "ours" else run_diffusers(spec)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
