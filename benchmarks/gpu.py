"""Everything to run on a machine with an NVIDIA GPU, in one command; writes gpu-report.json and gpu-report.md
(copy the table into docs/performance.md).

    python -m benchmarks.gpu                  # CUDA: parity, RNG, speed, memory, upscaler, hires, churn
    python -m benchmarks.gpu --quick          # CUDA: the checks, without the full-size speed table
    python -m benchmarks.gpu --smoke          # CPU, tiny models, fp16: the same code paths (CI runs this)

Sections (each reports its own error and the others go on):
- parity: tiny real-layout checkpoints generated on the device in fp16 and bf16 against fp32 on the CPU (the
  pixels A1111's tests pin), txt2img with two samplers, SDXL, img2img, inpaint and hires fix with Lanczos;
  passes within a stated tolerance.
- rng: the NV source (our Philox, on the CPU) against torch.randn on CUDA, which it emulates.
- speed: benchmarks.run's rows (it/s, peak VRAM, plan) for SD 1.5 at 512 and SDXL at 1024 with random weights:
  default, --compile, --xformers when installed, --medvram, --lowvram; the plain-diffusers baseline beside them.
- esrgan: a full-size ESRGAN x4 (23 RRDB blocks, random weights) on a 512x512 picture, on the device in fp16.
- sdxl_hires: full-size SDXL in fp16, hires fix with Lanczos: a picture that is not black, and whether the
  VAE needed the fp32 switch.
- churn: the same checkpoint twice: the second request must not move the model off the device and back."""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

TOLERANCE = {"mean": 2.0, "p99": 24}  # |difference| in 8-bit levels, against fp32 on the CPU


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny models only (the code paths, not the figures)")
    p.add_argument("--quick", action="store_true", help="skip the full-size speed table")
    p.add_argument("--only", default=None, help="comma-separated sections to run (default: all)")
    p.add_argument("--out", type=Path, default=Path("."), help="where gpu-report.json/.md go")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "sd-benchmark")
    return p.parse_args(argv)


def device_of(args) -> str:
    if args.smoke:
        return "cpu"
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke for the CPU check of these code paths")
    return "cuda"


# ---------------------------------------------------------------- sections

def tiny_models_dir(workdir: Path) -> Path:
    from tests.fixtures import tiny_models, tiny_upscalers

    root = workdir / "tiny-models"
    if not (root / "Stable-diffusion" / "sdxl.safetensors").exists():
        tiny_models.write_checkpoint(tiny_models.make_sd1(seed=1), root / "Stable-diffusion" / "sd1.safetensors")
        tiny_models.write_checkpoint(tiny_models.make_sdxl(seed=3), root / "Stable-diffusion" / "sdxl.safetensors")
        tiny_upscalers.write_esrgan(root / "ESRGAN" / "4x_tiny.pth")
    return root


def _service(models_dir: Path, out: Path, **settings):
    from app import build_service
    from backend.settings import Settings

    return build_service(Settings(models_dir=models_dir, outputs_dir=out, **settings))


def parity(args, device: str) -> dict:
    from backend.generation.requests import GenerationRequest

    models = tiny_models_dir(args.workdir)
    rng = np.random.default_rng(3)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    base = dict(prompt="a lighthouse", negative_prompt="fog", steps=4, width=64, height=64, seed=5,
                sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False)
    cases = {"txt2img Euler": {}, "txt2img DPM++ 2M Karras": dict(sampler_name="DPM++ 2M Karras"),
             "SDXL": dict(checkpoint="sdxl.safetensors"), "img2img": dict(init_image=picture, denoising_strength=0.6),
             "inpaint": dict(init_image=picture, mask=mask, denoising_strength=0.6),
             "hires Lanczos": dict(enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", denoising_strength=0.5)}
    reference = _service(models, args.workdir / "out-ref", device="cpu", precision="fp32")
    want = {name: reference.generate(GenerationRequest(**{**base, **c})).images[0] for name, c in cases.items()}
    reference.shutdown()
    results = {}
    for precision in ("fp16", "bf16"):
        try:
            svc = _service(models, args.workdir / f"out-{precision}", device=device, precision=precision)
        except ValueError as err:  # bf16 on a GPU without it
            results[precision] = {"refused": str(err)}
            continue
        for name, c in cases.items():
            got = np.asarray(svc.generate(GenerationRequest(**{**base, **c})).images[0], dtype=np.int16)
            diff = np.abs(got - np.asarray(want[name], dtype=np.int16))
            row = {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "max": int(diff.max())}
            row["ok"] = row["mean"] <= TOLERANCE["mean"] and row["p99"] <= TOLERANCE["p99"]
            results.setdefault(precision, {})[name] = row
        results[precision]["vae_fp32_switches"] = svc.runner.context.vae_upcasts
        svc.shutdown()
    return {"tolerance": TOLERANCE, **results}


def rng(args, device: str) -> dict:
    from backend.generation.noise import make_generator

    shape = (4, 64, 64)
    ours = make_generator(1234, "NV").randn(shape)
    if device != "cuda":
        return {"skipped": "needs CUDA (the NV source emulates its torch.randn)"}
    theirs = torch.randn(shape, generator=torch.Generator("cuda").manual_seed(1234), device="cuda").cpu()
    diff = (ours.float() - theirs).abs().max().item()
    return {"max_abs_diff": diff, "ok": diff < 1e-4}


def speed(args, device: str) -> dict:
    if args.smoke or args.quick:
        return {"skipped": "--smoke/--quick"}
    import importlib.util

    from benchmarks import run

    modes = ["default", "--compile", "--medvram", "--lowvram"]
    if importlib.util.find_spec("xformers") is not None:
        modes.insert(2, "--xformers")
    tables = {}
    for arch in ("sd15", "sdxl"):
        ns = argparse.Namespace(device=device, arch=[arch], size=None, steps=None, modes=modes, workdir=args.workdir,
                                repeats=3, rounds=1, no_baseline=False, timeout=3600)
        tables[arch] = run.table(arch, ns, run.bench_arch(arch, ns))
    return {"tables": tables}


def esrgan(args, device: str) -> dict:
    from backend.upscale.models import upscale_tiled
    from backend.upscale.nets import RRDBNet

    features, blocks, size = (8, 1, 32) if args.smoke else (64, 23, 512)
    torch.manual_seed(0)
    net = RRDBNet(3, features, blocks, 32 if not args.smoke else 8, upsamples=2, unshuffle=1)
    net = net.to(device, torch.float16).eval()
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8))
    if not args.smoke:  # warm-up (the smoke run's fp16 convolutions on a CPU are slow enough as it is)
        upscale_tiled(net, picture.crop((0, 0, 192, 192)))
    _sync(device)
    started = time.perf_counter()
    result = upscale_tiled(net, picture)
    _sync(device)
    return {"size": size, "seconds": time.perf_counter() - started, "result": list(result.size),
            "dtype": str(next(net.parameters()).dtype)}


def sdxl_hires(args, device: str) -> dict:
    from backend.generation.requests import GenerationRequest

    if args.smoke:
        models, size, checkpoint = tiny_models_dir(args.workdir), 64, "sdxl.safetensors"
    else:
        from benchmarks.architectures import write_files

        path, _ = write_files("sdxl", args.workdir)
        models, size, checkpoint = path.parent.parent, 1024, path.name
    svc = _service(models, args.workdir / "out-hires", device=device, precision="fp16")
    started = time.perf_counter()
    result = svc.generate(GenerationRequest(prompt="a lighthouse", steps=6, width=size, height=size, seed=2,
                                            sampler_name="Euler", checkpoint=checkpoint, enable_hr=True,
                                            hr_scale=1.5, hr_upscaler="Lanczos", denoising_strength=0.5,
                                            save_images=False))
    pixels = np.asarray(result.images[0])
    report = {"seconds": time.perf_counter() - started, "size": list(result.images[0].size),
              "pixel_std": float(pixels.std()), "not_black": bool(pixels.std() > 0),
              "vae_dtype": str(svc.runner.context.vae_dtype), "vae_fp32_switches": svc.runner.context.vae_upcasts}
    svc.shutdown()
    return report


def churn(args, device: str) -> dict:
    from backend.generation.requests import GenerationRequest
    from backend.model_manager import ModelManager

    svc = _service(tiny_models_dir(args.workdir), args.workdir / "out-churn", device=device,
                   precision="fp16")
    activations = []
    original = ModelManager._activate
    ModelManager._activate = lambda self, checkpoint: (activations.append(checkpoint.name), original(self, checkpoint))
    try:
        req = dict(prompt="a boat", steps=2, width=64, height=64, seed=1, sampler_name="Euler",
                   checkpoint="sd1.safetensors", save_images=False)
        svc.generate(GenerationRequest(**req))
        time.sleep(0.5)  # lets a background hash land and replace the registry entry
        svc.generate(GenerationRequest(**req))
    finally:
        ModelManager._activate = original
        svc.shutdown()
    return {"activations": activations, "ok": len(activations) == 1}


SECTIONS = {"parity": parity, "rng": rng, "speed": speed, "esrgan": esrgan, "sdxl_hires": sdxl_hires,
            "churn": churn}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def markdown(report: dict) -> str:
    lines = [f"## GPU report: {report['machine']}", ""]
    for name, result in report["sections"].items():
        lines.append(f"### {name}")
        if name == "speed" and "tables" in result:
            lines += [*result["tables"].values(), ""]
            continue
        lines += ["```", json.dumps(result, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = device_of(args)
    args.workdir.mkdir(parents=True, exist_ok=True)
    from benchmarks.run import machine

    report = {"machine": machine(), "device": device, "smoke": args.smoke, "sections": {}}
    chosen = args.only.split(",") if args.only else list(SECTIONS)
    for name in chosen:
        section = SECTIONS[name]
        print(f"{name} ...", flush=True)
        try:
            report["sections"][name] = section(args, device)
        except Exception as err:  # noqa: BLE001 - one failing section must not lose the others' figures
            report["sections"][name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
        print(f"  {json.dumps(report['sections'][name])[:300]}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-report.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu-report.md").write_text(markdown(report))
    failed = [n for n, r in report["sections"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
