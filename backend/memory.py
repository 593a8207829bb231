"""The one place that decides device placement and precision (later: offload, slicing, tiling, OOM retries)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceFacts:
    cuda: bool
    mps: bool
    cpu_bf16: bool  # the CPU has native bf16 arithmetic (AMX or AVX512-BF16)
    cuda_bf16: bool = False


def probe_device_facts() -> DeviceFacts:
    mps = getattr(torch.backends, "mps", None)
    return DeviceFacts(
        cuda=torch.cuda.is_available(),
        mps=bool(mps and mps.is_available()),
        cpu_bf16=_cpu_has_native_bf16(),
        cuda_bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )


def _cpu_has_native_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(f in flags for f in (" amx_bf16", " avx512_bf16"))


def choose_device(requested: str, facts: DeviceFacts) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if facts.cuda else "mps" if facts.mps else "cpu")
    return torch.device(requested)


def choose_dtype(requested: str, device: torch.device, facts: DeviceFacts) -> torch.dtype:
    """auto: fp16 on CUDA/MPS (bf16 where CUDA supports it is not needed: fp16 is faster and SD is trained for it);
    on CPU bf16 only where the processor computes it natively, else fp32."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if facts.cpu_bf16 else torch.float32
