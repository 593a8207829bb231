"""Speed and memory benchmark: our backend in each memory mode against plain diffusers on the same weights, in
the same run, each in its own process. Prints a markdown table per architecture.

    .venv/bin/python -m benchmarks.run                      # CPU: SD 1.5, 256x256, 4 steps
    .venv/bin/python -m benchmarks.run --device cuda        # GPU: SD 1.5 at 512 and SDXL at 1024, 20 steps
    .venv/bin/python -m benchmarks.run --arch sdxl --size 512 --steps 2 --mode=default --mode=--compile
    .venv/bin/python -m benchmarks.run --rounds 3 --mode=default      # CPU: baseline and default, interleaved

The first run writes full-size random-weight checkpoints (SD 1.5: 2 GB, SDXL: 7 GB) into --workdir."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from benchmarks.architectures import write_files

ROOT = Path(__file__).resolve().parent.parent
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}
MODES = {
    "cpu": ["default", "--no-half", "--attention-slicing"],
    "cuda": ["default", "--medvram", "--lowvram", "--compile"],
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", nargs="+", choices=["sd15", "sdxl"], default=None)
    p.add_argument("--size", type=int, default=None, help="image width and height (default: 256 on CPU, native on GPU)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 4 on CPU, 20 on GPU)")
    p.add_argument("--mode", action="append", dest="modes", default=None,
                   help="our flags for one run, repeatable: --mode=default --mode='--medvram --xformers' "
                        "(default: a set per device)")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "sd-benchmark")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each kind; the best one counts")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every row this many times, interleaved, so that a slow spell of a shared machine "
                        "hits the baseline and ours alike; the best round of each row counts")
    p.add_argument("--no-baseline", action="store_true", help="skip plain diffusers (e.g. when RAM is short)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds allowed per run")
    return p.parse_args()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"{cpu}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GB RAM, "
            f"torch {torch.__version__}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        text += f", {props.name} ({props.total_memory / 2**30:.0f} GB)"
    return text


def size_and_steps(arch: str, args: argparse.Namespace) -> tuple[int, int]:
    """As asked, else 256x256 and 4 steps on the CPU, the native size and 20 steps on a GPU."""
    size = args.size or (256 if args.device == "cpu" else NATIVE_SIZE[arch])
    return size, args.steps or (4 if args.device == "cpu" else 20)


def run_scenario(spec: dict, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scenario", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {done.returncode}: {tail[0][:200]}"}


def bench_arch(arch: str, args: argparse.Namespace) -> list[tuple[str, dict]]:
    print(f"preparing {arch} checkpoint in {args.workdir} ...", file=sys.stderr, flush=True)
    checkpoint, config_dir = write_files(arch, args.workdir)
    second = checkpoint.with_name(f"{arch}-copy.safetensors")
    if not second.exists():
        os.link(checkpoint, second)  # a second checkpoint to switch to and back from
    size, steps = size_and_steps(arch, args)
    common = dict(arch=arch, checkpoint=str(checkpoint), device=args.device, size=size, steps=steps,
                  repeats=args.repeats)
    rows = []
    if not args.no_baseline:
        dtype = "float32" if args.device == "cpu" else "float16"
        rows.append((f"diffusers {dtype} (baseline)", _timed(dict(common, engine="diffusers", dtype=dtype,
                                                                     config_dir=str(config_dir)), args)))
    for i, mode in enumerate(MODES[args.device] if args.modes is None else args.modes):
        flags = [] if mode == "default" else mode.split()
        spec = dict(common, engine="ours", flags=flags, switch_to=second.name if i == 0 else None)
        rows.append((f"ours {mode}", _timed(spec, args)))
    return rows


def _timed(spec: dict, args: argparse.Namespace) -> dict:
    label = spec["engine"] + " " + " ".join(spec.get("flags") or [])
    print(f"  running {label} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = run_scenario(spec, args.timeout)
    print(f"  ... {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return result


def best_of_rounds(rounds: list[list[tuple[str, dict]]]) -> list[tuple[str, dict]]:
    """Each row's fastest round, with the speed-up over the baseline within every round beside it."""
    merged = []
    for i, (name, _) in enumerate(rounds[0]):
        results = [r[i][1] for r in rounds]
        ok = [r for r in results if "error" not in r]
        best = dict(min(ok, key=lambda r: r["image_s"])) if ok else results[0]
        best["per_round"] = [_speedup(r[0][1], r[i][1]) for r in rounds]
        merged.append((name, best))
    return merged


def _speedup(baseline: dict, result: dict) -> float | None:
    if "image_s" not in baseline or "image_s" not in result:
        return None
    return baseline["image_s"] / result["image_s"]


def table(arch: str, args: argparse.Namespace, rows: list[tuple[str, dict]]) -> str:
    baseline = rows[0][1] if rows and "baseline" in rows[0][0] else {}
    size, steps = size_and_steps(arch, args)
    lines = [f"### {arch}, {size}x{size}, {steps} steps, Euler, CFG 7, batch 1, on {args.device}", "",
             "| run | dtype | s/step | it/s | s/image | image speed-up | cold load s | switch back s | "
             "peak RSS GB | peak VRAM GB | speed-up in each round | memory plan |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} ||||||||||")
            continue
        speedup = _speedup(baseline, r)
        per_round = ", ".join(f"{x:.2f}x" if x else "-" for x in r.get("per_round", [])) if baseline else ""
        switch = r.get("switch_s")
        if switch is None and "baseline" in name:
            switch = r["load_s"]  # plain diffusers has no cache: switching back is a reload
        lines.append("| " + " | ".join([
            name, r["dtype"], _num(r["step_s"], 3), _num(1 / r["step_s"] if r["step_s"] else None, 2),
            _num(r["image_s"], 2), f"{speedup:.2f}x" if speedup else "", _num(r["load_s"], 1), _num(switch, 2),
            _num(r["peak_rss_gb"], 2), _num(r.get("peak_vram_gb"), 2), per_round, r["plan"]]) + " |")
    return "\n".join(lines)


def _num(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def main() -> None:
    args = parse_args()
    archs = args.arch or (["sd15"] if args.device == "cpu" else ["sd15", "sdxl"])
    print(f"Machine: {machine()}\n")
    for arch in archs:
        rounds = [bench_arch(arch, args) for _ in range(args.rounds)]
        print(table(arch, args, best_of_rounds(rounds)) + "\n", flush=True)


if __name__ == "__main__":
    main()
