"""What the machine has: devices, native bf16, free memory, usable attention kernels. Probed, never decided here."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psutil
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceFacts:
    cuda: bool = False
    mps: bool = False
    cpu_bf16: bool = False  # the CPU has native bf16 arithmetic (AMX or AVX512-BF16)
    cuda_bf16: bool = False
    sdpa: bool = True  # torch.nn.functional.scaled_dot_product_attention exists
    mkldnn: bool = False  # PyTorch's oneDNN CPU kernels can pack bf16 convolution weights on this processor
    xformers: bool = False  # xformers' memory-efficient attention runs on this CUDA device
    xformers_problem: str = ""  # why it does not, for the log
    total_vram: int = 0
    free_vram: int = 0
    total_ram: int = 0
    available_ram: int = 0


def probe_device_facts(check_xformers: bool = False) -> DeviceFacts:
    """The facts as they are now (free memory changes: probe again before each load)."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    free_vram, total_vram = torch.cuda.mem_get_info() if cuda else (0, 0)
    xformers_ok, xformers_problem = _probe_xformers(cuda) if check_xformers else (False, "")
    ram = psutil.virtual_memory()
    return DeviceFacts(
        cuda=cuda,
        mps=bool(mps and mps.is_available()),
        cpu_bf16=_cpu_has_native_bf16(),
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
        sdpa=hasattr(F, "scaled_dot_product_attention"),
        mkldnn=_onednn_packs_bf16(),
        xformers=xformers_ok,
        xformers_problem=xformers_problem,
        total_vram=total_vram,
        free_vram=free_vram,
        total_ram=ram.total,
        available_ram=ram.available,
    )


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


def _onednn_packs_bf16() -> bool:
    """oneDNN's bf16 weight packing needs AVX512 (BW/VL/DQ) or AVX-NE-CONVERT; try it once on a tiny layer."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight = torch.zeros(4, 4, 3, 3, dtype=torch.bfloat16)
        torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), [1, 1], [1, 1], [1, 1], 1, [1, 4, 8, 8])
    except (RuntimeError, AttributeError):
        return False
    return True


def _probe_xformers(cuda: bool) -> tuple[bool, str]:
    """Run xformers' attention once on a tiny input: an installed wheel may lack kernels for this torch/GPU."""
    if not cuda:
        return False, "xformers needs a CUDA GPU"
    try:
        import xformers.ops

        q = torch.zeros((1, 8, 1, 64), device="cuda", dtype=torch.float16)
        xformers.ops.memory_efficient_attention(q, q, q)
    except Exception as err:  # noqa: BLE001 - any failure means "not usable", with its reason logged
        return False, f"xformers is not usable here ({str(err).splitlines()[0][:120]})"
    return True, ""
