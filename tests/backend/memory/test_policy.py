"""The memory policy as a pure function: facts + model size + flags in, measures out."""

import dataclasses

import pytest
import torch

from backend.memory.apply import configure_math
from backend.memory.facts import DeviceFacts
from backend.memory.policy import (
    GB,
    MIN_TILED_PIXELS,
    Measures,
    ModelSize,
    Offload,
    cache_budget_bytes,
    choose_device,
    choose_dtype,
    choose_upscaler_dtype,
    choose_vae_dtype,
    models_to_evict,
    next_fallback,
    plan_memory,
)
from backend.settings import MemoryFlags

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
SD15 = ModelSize(total_bytes=int(2.0 * GB), largest_component_bytes=int(1.6 * GB))
SDXL = ModelSize(total_bytes=int(6.9 * GB), largest_component_bytes=int(4.8 * GB), is_sdxl=True)


def gpu(free_gb: float, total_gb: float = 80, **kw) -> DeviceFacts:
    return DeviceFacts(cuda=True, total_vram=int(total_gb * GB), free_vram=int(free_gb * GB),
                       total_ram=64 * GB, available_ram=48 * GB, **kw)


def cpu(ram_gb: float = 16, bf16: bool = True) -> DeviceFacts:
    return DeviceFacts(cpu_bf16=bf16, total_ram=int(ram_gb * GB), available_ram=int(ram_gb * GB * 0.75))


def test_device_and_precision_choice():
    assert choose_device("auto", gpu(10)) == CUDA
    assert choose_device("auto", cpu()) == CPU
    assert choose_device("auto", DeviceFacts(mps=True)) == torch.device("mps")
    assert choose_device("cpu", gpu(10)) == CPU
    assert choose_dtype("auto", CUDA, gpu(10)) == torch.float16
    assert choose_dtype("auto", CPU, cpu(bf16=True)) == torch.bfloat16
    assert choose_dtype("auto", CPU, cpu(bf16=False)) == torch.float32
    assert choose_dtype("fp32", CUDA, gpu(10)) == torch.float32
    assert choose_dtype("bf16", CPU, cpu(bf16=False)) == torch.bfloat16
    assert choose_dtype("bf16", CUDA, dataclasses.replace(gpu(10), cuda_bf16=True)) == torch.bfloat16
    with pytest.raises(ValueError, match="bfloat16"):  # a GPU without bf16 (before Ampere): refused, not emulated
        choose_dtype("bf16", CUDA, dataclasses.replace(gpu(10), cuda_bf16=False))


def test_vae_and_upscaler_precision():
    ampere = dataclasses.replace(gpu(10), cuda_bf16=True)
    assert choose_vae_dtype(torch.float16, False, CUDA, ampere) == torch.bfloat16  # no overflow, no retry
    assert choose_vae_dtype(torch.float16, False, CUDA, dataclasses.replace(ampere, cuda_bf16=False)) == torch.float16
    assert choose_vae_dtype(torch.float16, True, CUDA, ampere) == torch.float32  # --no-half-vae
    assert choose_vae_dtype(torch.float16, False, CPU, cpu()) == torch.float16  # --precision fp16 on the CPU
    assert choose_vae_dtype(torch.float32, False, CUDA, ampere) == torch.float32  # --no-half
    assert choose_upscaler_dtype(torch.float16) == torch.float16
    assert choose_upscaler_dtype(torch.bfloat16) == torch.float32 and choose_upscaler_dtype(torch.float32) == torch.float32


def test_tf32_is_on_for_cuda_only():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        configure_math(CPU)
        assert not torch.backends.cuda.matmul.allow_tf32
        configure_math(CUDA)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_big_gpu_runs_everything_resident_with_sdpa():
    plan = plan_memory(gpu(75), CUDA, SDXL, MemoryFlags())
    assert plan.measures == Measures(attention="sdpa", attention_slicing=False, offload=Offload.NONE)
    assert plan.reasons == ()
    assert not plan.for_request(2048, 2048, 1).vae_tiling  # 80 GB: even the largest image decodes whole
    smaller = plan_memory(gpu(12), CUDA, SDXL, MemoryFlags())  # 5 GB left beside the model: 2.5 MP fit
    assert not smaller.for_request(1024, 1024, 1).vae_tiling
    assert smaller.for_request(2048, 2048, 1).vae_tiling


def test_offload_is_chosen_from_free_vram_and_model_size():
    assert plan_memory(gpu(12), CUDA, SDXL, MemoryFlags()).measures.offload is Offload.NONE
    mid = plan_memory(gpu(9), CUDA, SDXL, MemoryFlags())
    assert mid.measures.offload is Offload.MODEL and "offload model: 9.0 GB VRAM free" in mid.describe()
    low = plan_memory(gpu(5), CUDA, SDXL, MemoryFlags())
    assert low.measures.offload is Offload.SEQUENTIAL
    assert plan_memory(gpu(5), CUDA, SD15, MemoryFlags()).measures.offload is Offload.NONE


def test_very_low_vram_adds_attention_slicing_but_sdpa_alone_does_not():
    assert plan_memory(gpu(2.5, total_gb=4), CUDA, SD15, MemoryFlags()).measures.attention_slicing
    assert not plan_memory(gpu(6), CUDA, SD15, MemoryFlags()).measures.attention_slicing
    no_sdpa = plan_memory(gpu(40, sdpa=False), CUDA, SD15, MemoryFlags())
    assert no_sdpa.measures.attention_slicing and "SDPA is not available" in no_sdpa.describe()
    assert plan_memory(gpu(40), CUDA, SD15, MemoryFlags(attention_slicing=True)).measures.attention_slicing


def test_flags_force_offload_modes():
    assert plan_memory(gpu(75), CUDA, SD15, MemoryFlags(lowvram=True)).measures.offload is Offload.SEQUENTIAL
    assert plan_memory(gpu(75), CUDA, SD15, MemoryFlags(medvram=True)).measures.offload is Offload.MODEL
    assert plan_memory(gpu(75), CUDA, SD15, MemoryFlags(medvram_sdxl=True)).measures.offload is Offload.NONE
    assert plan_memory(gpu(75), CUDA, SDXL, MemoryFlags(medvram_sdxl=True)).measures.offload is Offload.MODEL


def test_offload_flags_are_ignored_on_cpu_and_said_so():
    plan = plan_memory(cpu(), CPU, SD15, MemoryFlags(lowvram=True))
    assert plan.measures.offload is Offload.NONE
    assert "--lowvram ignored on cpu" in plan.describe()


def test_xformers_where_usable_else_sdpa_with_a_reason():
    usable = plan_memory(gpu(40, xformers=True), CUDA, SD15, MemoryFlags(xformers=True))
    assert usable.measures.attention == "xformers"
    broken = gpu(40, xformers=False, xformers_problem="xformers is not usable here (built for another torch)")
    fallback = plan_memory(broken, CUDA, SD15, MemoryFlags(xformers=True))
    assert fallback.measures.attention == "sdpa"
    assert "--xformers: xformers is not usable here (built for another torch); using PyTorch SDPA" in fallback.describe()
    on_cpu = plan_memory(cpu(), CPU, SD15, MemoryFlags(xformers=True))
    assert on_cpu.measures.attention == "sdpa" and "no kernels for cpu" in on_cpu.describe()


def test_compile_only_without_offload():
    assert plan_memory(gpu(40), CUDA, SD15, MemoryFlags(compile=True)).measures.compile
    offloaded = plan_memory(gpu(40), CUDA, SD15, MemoryFlags(compile=True, lowvram=True))
    assert not offloaded.measures.compile and "--compile is off" in offloaded.describe()


def test_vae_slicing_for_batches_and_tiling_above_what_fits():
    plan = plan_memory(cpu(ram_gb=4), CPU, SD15, MemoryFlags())
    assert plan.for_request(512, 512, 4).vae_slicing
    assert not plan.for_request(512, 512, 1).vae_slicing
    assert not plan.for_request(512, 512, 1).vae_tiling
    assert plan.for_request(2048, 2048, 1).vae_tiling  # 4 MP x 2 KB/pixel is more than the 1 GB the model leaves
    starved = plan_memory(cpu(ram_gb=0.5), CPU, SD15, MemoryFlags())
    assert starved.vae_tiling_pixels == MIN_TILED_PIXELS  # never tiles at 512x512 or below


def test_oom_ladder_on_gpu():
    names, measures = [], Measures(vae_slicing=True)
    while (measures := next_fallback(measures, batch_size=4, device=CUDA)) is not None:
        names.append(measures.fallbacks[-1])
        last = measures
    assert names == ["VAE tiling", "attention slicing", "model offload", "sequential offload",
                     "batch in 2 parts", "batch in 4 parts"]
    assert last.offload is Offload.SEQUENTIAL and last.batch_split == 4 and last.fallbacks == tuple(names)


def test_oom_ladder_on_cpu_skips_offload_and_steps_already_taken():
    start = Measures(vae_tiling=True)  # a big image is tiled from the start
    names, measures = [], start
    while (measures := next_fallback(measures, batch_size=3, device=CPU)) is not None:
        names.append(measures.fallbacks[-1])
    assert names == ["attention slicing", "batch in 2 parts", "batch in 3 parts"]
    assert next_fallback(Measures(vae_tiling=True, attention_slicing=True), batch_size=1, device=CPU) is None


def test_compiled_unet_is_uncompiled_when_offload_starts():
    stronger = next_fallback(Measures(vae_tiling=True, attention_slicing=True, compile=True), 1, CUDA)
    assert stronger.offload is Offload.MODEL and not stronger.compile


def test_cache_eviction_choice():
    assert models_to_evict([], max_models=1, max_bytes=10) == 0
    assert models_to_evict([3, 3, 3], max_models=1, max_bytes=10) == 2  # keep only the most recent
    assert models_to_evict([3, 3, 3], max_models=5, max_bytes=7) == 1  # 3+3 fits in 7
    assert models_to_evict([3, 11], max_models=5, max_bytes=10) == 2  # one too big for the budget
    assert models_to_evict([3, 3], max_models=0, max_bytes=100) == 2
    assert cache_budget_bytes(cpu(ram_gb=30), None) == 10 * GB
    assert cache_budget_bytes(cpu(), 2.5) == int(2.5 * GB)
