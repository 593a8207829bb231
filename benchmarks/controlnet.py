"""The cost of one ControlNet unit per step: a full-size SD 1.5 UNet step (cond + uncond in one batch) on the
one loop's Denoiser, without and with a full-size SD 1.5 ControlNet (random weights cost the same compute as
real ones), timed side by side in the same run.

    python -m benchmarks.controlnet [--size 256] [--steps 3] [--device cpu|cuda] [--dtype fp32|fp16]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from backend.control.inject import ActiveUnit, ControlPass
from backend.control.units import ControlUnit
from backend.generation.loop import Denoiser, PromptConds
from backend.prompts.encode import Conditioning
from benchmarks.architectures import SD15_UNET


def _denoiser(unet, control: ControlPass | None, dtype) -> Denoiser:
    cond = PromptConds([(1.0, [(1000, Conditioning(torch.randn(1, 77, 768, dtype=dtype), None))])])
    uncond = PromptConds([(1.0, [(1000, Conditioning(torch.randn(1, 77, 768, dtype=dtype), None))])])
    return Denoiser(unet, cond, uncond, 7.0, dtype, control=control)


def _time_steps(denoiser: Denoiser, x: torch.Tensor, steps: int, sync) -> float:
    t = torch.full((x.shape[0],), 500.0, device=x.device)
    times = []
    with torch.no_grad():
        denoiser(x, t, 0)  # warm-up
        for step in range(steps):
            sync()
            start = time.perf_counter()
            denoiser(x, t, step)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval().requires_grad_(False)
    net = ControlNetModel.from_unet(unet, load_weights_from_unet=True).eval().requires_grad_(False)
    unet, net = unet.to(device, dtype), net.to(device, dtype)
    x = torch.randn(1, 4, args.size // 8, args.size // 8, device=device, dtype=dtype)
    unit = ActiveUnit(ControlUnit(model="bench"), net, torch.rand(1, 3, args.size, args.size))
    control = ControlPass([unit], hires=False, hires_enabled=False, sdxl=False)
    plain = _time_steps(_denoiser(unet, None, dtype), x, args.steps, sync)
    with_unit = _time_steps(_denoiser(unet, control, dtype), x, args.steps, sync)
    print(f"SD 1.5 UNet step at {args.size}x{args.size}, batch 1 (cond + uncond), {args.device} {args.dtype}")
    print(f"{'':28} {'s/step':>8} {'ratio':>6}")
    print(f"{'plain step':28} {plain:8.3f} {1.0:6.2f}")
    print(f"{'with one ControlNet unit':28} {with_unit:8.3f} {with_unit / plain:6.2f}")


if __name__ == "__main__":
    main()
