"""Hires fix at 2x on full-size SD 1.5 shapes (random weights), stage by stage, beside two baselines in the same
run: a plain image at the first-pass size and a plain image made directly at the target size.

    .venv/bin/python -m benchmarks.hires                    # CPU: 256 -> 512, 4 + 4 steps
    .venv/bin/python -m benchmarks.hires --device cuda      # GPU: 512 -> 1024, 20 + 20 steps

Stages are timed by wrapping the functions hires fix calls (the first and second sampling pass, the latent or
image upscale, the decode and encode of image upscalers, the final decode); each row is the best of --repeats.
The first run writes a 2 GB checkpoint into --workdir (shared with benchmarks.run)."""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.architectures import write_files


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=None, help="first-pass size (default: 256 on CPU, 512 on GPU)")
    p.add_argument("--steps", type=int, default=None, help="steps of each pass (default: 4 on CPU, 20 on GPU)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "sd-benchmark")
    return p.parse_args()


class StageClock:
    """Wraps module functions so that each call's duration is added to its stage (synchronised on CUDA)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def wrapping(self, targets: list[tuple[object, str, str]]):
        originals = [(module, name, getattr(module, name)) for module, name, _ in targets]
        for (module, name, stage), (_, _, original) in zip(targets, originals, strict=True):
            setattr(module, name, self._timed(original, stage))
        try:
            yield self
        finally:
            for module, name, original in originals:
                setattr(module, name, original)

    def _timed(self, function, stage: str):
        def timed(*args, **kwargs):
            _sync()
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                _sync()
                self.seconds[self._label(stage)] += time.perf_counter() - started
                self.calls[stage] += 1
        return timed

    def _label(self, stage: str) -> str:
        if stage == "sample":  # the first call is the first pass, the second the hires pass
            return "first pass" if self.calls[stage] == 0 else "second pass"
        if stage == "decode":  # image upscalers decode the first pass too; the last decode is the result's
            return "decode"
        return stage


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    size = args.size or (512 if args.device == "cuda" else 256)
    steps = args.steps or (20 if args.device == "cuda" else 4)
    checkpoint, _ = write_files("sd15", args.workdir)

    from app import build_service, parse_args as app_args, settings_from_args
    from backend.generation import hires, sampling, txt2img
    from backend.generation.requests import GenerationRequest

    service = build_service(settings_from_args(app_args(["--models-dir", str(checkpoint.parent.parent),
                                                         "--device", args.device])))
    base = dict(prompt="a lighthouse on a cliff at sunset", negative_prompt="blurry", steps=steps, seed=1,
                sampler_name="Euler", cfg_scale=7.0, save_images=False, checkpoint=checkpoint.name)
    rows = [("plain, first-pass size (baseline)", dict(width=size, height=size)),
            ("plain, target size (baseline)", dict(width=2 * size, height=2 * size)),
            ("hires fix, Latent", dict(width=size, height=size, enable_hr=True, hr_upscaler="Latent",
                                       denoising_strength=0.5)),
            ("hires fix, Lanczos", dict(width=size, height=size, enable_hr=True, hr_upscaler="Lanczos",
                                        denoising_strength=0.5))]
    targets = [(txt2img, "sample", "sample"), (hires, "upscale_latents", "latent upscale"),
               (hires, "upscale_image", "image upscale"), (txt2img, "_encode_sampled", "encode"),
               (sampling, "decode_latents", "decode")]
    service.generate(GenerationRequest(**base, width=size, height=size))  # load and warm up
    stages = ["first pass", "latent upscale", "image upscale", "encode", "second pass", "decode"]
    print(f"SD 1.5 shapes, {args.device}, {size} -> {2 * size}, {steps} + {steps} steps, Euler, "
          f"{service.models.loaded_model.dtype}, best of {args.repeats}\n")
    print("| run | total s | " + " | ".join(stages) + " |")
    print("|---|---|" + "---|" * len(stages))
    for label, fields in rows:
        best = None
        for _ in range(args.repeats):
            with StageClock().wrapping(targets) as clock:
                _sync()
                started = time.perf_counter()
                service.generate(GenerationRequest(**base, **fields))
                _sync()
                total = time.perf_counter() - started
            if best is None or total < best[0]:
                best = (total, dict(clock.seconds))
        total, seconds = best
        cells = [f"{seconds[s]:.2f}" if s in seconds else "" for s in stages]
        print(f"| {label} | {total:.2f} | " + " | ".join(cells) + " |")
    service.shutdown()


if __name__ == "__main__":
    main()
