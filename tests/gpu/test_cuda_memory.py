"""GPU-only checks of the memory measures (skipped without CUDA): offload really keeps weights off the GPU and
lowers peak memory, and the images stay the same. Run on a lent GPU machine: pytest tests/gpu."""

import numpy as np
import pytest
import torch

from backend.generation.requests import GenerationRequest
from backend.settings import MemoryFlags
from tests.conftest import build_backend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run(models_dir, tmp_path, flags: MemoryFlags):
    svc = build_backend(models_dir, tmp_path / str(hash(flags)), device="cuda", precision="fp16", memory=flags)
    req = GenerationRequest(prompt="a lighthouse", steps=3, width=128, height=128, seed=5, sampler_name="Euler",
                            checkpoint="sdxl.safetensors", save_images=False)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    image = np.asarray(svc.generate(req).images[0], dtype=np.int16)
    peak = torch.cuda.max_memory_allocated()
    model = svc.models.get(svc.registry.find_checkpoint("sdxl.safetensors"))
    devices = {p.device.type for p in model.unet.parameters()}
    svc.shutdown()
    return image, peak, devices


def test_offload_modes_keep_weights_off_the_gpu_and_the_image_the_same(models_dir, tmp_path):
    base, base_peak, base_devices = _run(models_dir, tmp_path, MemoryFlags())
    med, med_peak, med_devices = _run(models_dir, tmp_path, MemoryFlags(medvram=True))
    low, low_peak, low_devices = _run(models_dir, tmp_path, MemoryFlags(lowvram=True))
    assert base_devices == {"cuda"}
    assert med_devices == {"cpu"}  # after the job the VAE was last on the GPU; the UNet waits in RAM
    assert low_devices == {"meta"}  # sequential offload: weights live in the offload map
    assert low_peak < base_peak
    assert np.abs(med - base).max() <= 2 and np.abs(low - base).max() <= 2


def test_xformers_flag_works_or_falls_back_with_a_reason(models_dir, tmp_path):
    svc = build_backend(models_dir, tmp_path / "x", device="cuda", precision="fp16", memory=MemoryFlags(xformers=True))
    svc.models.get(svc.registry.find_checkpoint("sd1.safetensors"))
    plan = svc.models.plan
    assert plan.measures.attention == "xformers" or "using PyTorch SDPA instead" in plan.describe()
    svc.shutdown()


def test_a_model_loads_straight_onto_the_gpu(tmp_path):
    # The fp32 file is read one tensor at a time and each goes to the GPU as it comes: RAM never holds the model.
    from backend.loading.loader import load_model, module_bytes
    from tests.fixtures import tiny_models

    path = tiny_models.write_checkpoint(tiny_models.make_sd1(seed=7, width=384), tmp_path / "wide.safetensors")
    torch.zeros(1, device="cuda")  # the CUDA context takes RAM of its own: create it before measuring
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak RSS to the current RSS
    start = _kib("VmRSS")
    model = load_model(path, torch.float16, device=torch.device("cuda"))
    rise = (_kib("VmHWM") - start) * 1024
    assert {p.device.type for m in model.modules() for p in m.parameters()} == {"cuda"}
    assert rise < sum(module_bytes(m) for m in model.modules()) / 2


def _kib(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))
