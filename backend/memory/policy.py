"""The memory policy: the one place that decides device, precision, attention, VAE slicing/tiling, offload,
the out-of-memory fallback ladder and which cached models to evict.

Everything here is a pure function of facts (what the machine has), the model's size and the user's flags, so
the whole policy is testable without a GPU. `facts.py` gathers the facts; `apply.py` carries the measures out."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

import torch

from backend.memory.facts import DeviceFacts
from backend.settings import MemoryFlags

GB = 1024**3

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Activation memory for sampling at the family's native size with SDPA, in fp16 (measured ballpark figures; the
# exact number matters less than keeping a reserve).
WORKING_BYTES = {False: int(1.5 * GB), True: int(3.5 * GB)}  # keyed by "is SDXL"
# Below this much free VRAM, attention is sliced even though SDPA is usable.
VERY_LOW_VRAM = 3 * GB
# A VAE decode needs roughly this many bytes per output pixel per byte of dtype (128-channel full-size
# activations plus GroupNorm temporaries); images above what fits are decoded in tiles.
VAE_BYTES_PER_PIXEL_PER_DTYPE_BYTE = 128 * 8
# Never tile below this size: tiles of the VAE are 512x512 and tiling smaller images only adds seams.
MIN_TILED_PIXELS = 512 * 512


class Offload(str, Enum):
    NONE = "none"
    MODEL = "model"  # --medvram: one component (text encoder, UNet, VAE) on the GPU at a time
    SEQUENTIAL = "sequential"  # --lowvram: each layer's weights go to the GPU only while it runs


@dataclass(frozen=True)
class ModelSize:
    """What the policy needs to know about a loaded model."""

    total_bytes: int
    largest_component_bytes: int
    is_sdxl: bool = False
    dtype: torch.dtype = torch.float16

    @property
    def dtype_bytes(self) -> int:
        return torch.finfo(self.dtype).bits // 8


@dataclass(frozen=True)
class Measures:
    """What is done to save memory while one batch runs."""

    attention: str = "sdpa"  # sdpa | xformers
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    offload: Offload = Offload.NONE
    compile: bool = False  # torch.compile + channels_last on the UNet
    prepacked_conv: bool = False  # CPU: convolution weights packed once for oneDNN (see cpu_prepack.py)
    batch_split: int = 1  # the batch runs in this many parts
    fallbacks: tuple[str, ...] = ()  # out-of-memory fallbacks taken, in order (for the log and the infotext)

    def describe(self) -> str:
        parts = [f"attention {self.attention}" + (" sliced" if self.attention_slicing else ""),
                 f"offload {self.offload.value}"]
        parts += [name for name, on in (("VAE slicing", self.vae_slicing), ("VAE tiling", self.vae_tiling),
                                        ("torch.compile", self.compile),
                                        ("prepacked convolutions", self.prepacked_conv)) if on]
        if self.batch_split > 1:
            parts.append(f"batch in {self.batch_split} parts")
        return ", ".join(parts)


@dataclass(frozen=True)
class MemoryPlan:
    """The measures chosen for one loaded model, why, and the size above which its VAE decodes in tiles."""

    measures: Measures
    vae_tiling_pixels: int
    reasons: tuple[str, ...] = field(default=())

    def for_request(self, width: int, height: int, batch_size: int) -> Measures:
        return replace(self.measures, vae_slicing=batch_size > 1,
                       vae_tiling=self.measures.vae_tiling or width * height > self.vae_tiling_pixels)

    def weights_device(self, device: torch.device) -> torch.device:
        """Where the model is loaded: straight onto the device, unless it is offloaded (then it waits in RAM)."""
        return device if self.measures.offload is Offload.NONE else torch.device("cpu")

    def describe(self) -> str:
        tiling = f"VAE tiling above {self.vae_tiling_pixels / 1e6:.1f} MP"
        return "; ".join([self.measures.describe(), tiling, *self.reasons])


# ------------------------------------------------------------------------------------------ device and precision

def choose_device(requested: str, facts: DeviceFacts) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if facts.cuda else "mps" if facts.mps else "cpu")
    return torch.device(requested)


def choose_dtype(requested: str, device: torch.device, facts: DeviceFacts) -> torch.dtype:
    """auto: fp16 on CUDA/MPS (SD is trained for it and it is the fastest there); on CPU bf16 only where the
    processor computes it natively (AMX / AVX512-BF16: about 10x faster than fp32), else fp32."""
    if requested == "bf16" and device.type == "cuda" and not facts.cuda_bf16:
        raise ValueError("--precision bf16: this GPU cannot compute in bfloat16; use fp16 or fp32")
    if requested != "auto":
        return _DTYPES[requested]
    if device.type in ("cuda", "mps"):
        return torch.float16
    return torch.bfloat16 if facts.cpu_bf16 else torch.float32


# ------------------------------------------------------------------------------------------ measures per model

def plan_memory(facts: DeviceFacts, device: torch.device, model: ModelSize, flags: MemoryFlags) -> MemoryPlan:
    reasons: list[str] = []
    attention = _choose_attention(facts, device, flags, reasons)
    offload = _choose_offload(facts, device, model, flags, reasons)
    slicing = _choose_slicing(facts, device, flags, reasons)
    compile_unet = flags.compile and offload is Offload.NONE
    if flags.compile and not compile_unet:
        reasons.append("--compile is off while the model is offloaded")
    # On the CPU, bf16 convolutions spend as long reordering weights as computing: pack them once instead.
    prepack = device.type == "cpu" and facts.mkldnn and model.dtype == torch.bfloat16 and not compile_unet
    measures = Measures(attention=attention, attention_slicing=slicing, offload=offload, compile=compile_unet,
                        prepacked_conv=prepack)
    return MemoryPlan(measures, _vae_tiling_pixels(facts, device, model, offload), tuple(reasons))


def _choose_attention(facts: DeviceFacts, device: torch.device, flags: MemoryFlags, reasons: list[str]) -> str:
    if not flags.xformers:
        return "sdpa"
    if device.type == "cuda" and facts.xformers:
        return "xformers"
    why = facts.xformers_problem or f"xformers has no kernels for {device.type}"
    reasons.append(f"--xformers: {why}; using PyTorch SDPA instead")
    return "sdpa"


def _choose_slicing(facts: DeviceFacts, device: torch.device, flags: MemoryFlags, reasons: list[str]) -> bool:
    """Slicing on top of SDPA/xformers only slows things down: use it when asked, or when there is no choice."""
    if flags.attention_slicing:
        return True
    if not facts.sdpa:
        reasons.append("attention slicing: PyTorch SDPA is not available")
        return True
    if device.type == "cuda" and facts.free_vram < VERY_LOW_VRAM:
        reasons.append(f"attention slicing: only {facts.free_vram / GB:.1f} GB VRAM free")
        return True
    return False


def _choose_offload(facts: DeviceFacts, device: torch.device, model: ModelSize, flags: MemoryFlags,
                    reasons: list[str]) -> Offload:
    asked = (Offload.SEQUENTIAL if flags.lowvram else
             Offload.MODEL if flags.medvram or (flags.medvram_sdxl and model.is_sdxl) else None)
    if device.type != "cuda":
        if asked is not None:
            reasons.append(f"--{'lowvram' if flags.lowvram else 'medvram'} ignored on {device.type}: "
                           "there is no separate GPU memory to save")
        return Offload.NONE
    if asked is not None:
        reasons.append(f"offload {asked.value}: asked by flag")
        return asked
    working = int(WORKING_BYTES[model.is_sdxl] * model.dtype_bytes / 2)
    free = facts.free_vram
    if free >= model.total_bytes + working:
        return Offload.NONE
    if free >= model.largest_component_bytes + working:
        reasons.append(f"offload model: {free / GB:.1f} GB VRAM free, the model needs "
                       f"{(model.total_bytes + working) / GB:.1f} GB")
        return Offload.MODEL
    reasons.append(f"offload sequential: {free / GB:.1f} GB VRAM free, its largest part needs "
                   f"{(model.largest_component_bytes + working) / GB:.1f} GB")
    return Offload.SEQUENTIAL


def _vae_tiling_pixels(facts: DeviceFacts, device: torch.device, model: ModelSize, offload: Offload) -> int:
    """The largest image (in pixels) whose VAE decode fits in what the model leaves free."""
    if device.type == "cuda":
        resident = {Offload.NONE: model.total_bytes, Offload.MODEL: model.largest_component_bytes,
                    Offload.SEQUENTIAL: 0}[offload]
        free = facts.free_vram - resident
    else:
        free = facts.available_ram - model.total_bytes  # planned before loading: the model will take its share
    fits = free // (VAE_BYTES_PER_PIXEL_PER_DTYPE_BYTE * model.dtype_bytes)
    return max(MIN_TILED_PIXELS, int(fits))


def choose_upscaler_dtype(dtype: torch.dtype) -> torch.dtype:
    """Upscaler networks run in half precision where the models do (A1111: unless --no-half), else fp32 (bf16's
    short mantissa shows in upscaled pixels)."""
    return torch.float16 if dtype == torch.float16 else torch.float32


def choose_vae_dtype(dtype: torch.dtype, no_half_vae: bool, device: torch.device = torch.device("cpu"),
                     facts: DeviceFacts = DeviceFacts()) -> torch.dtype:
    """--no-half-vae keeps the VAE in fp32. A half-precision model on a GPU with bf16 gets a bf16 VAE: fp32's
    range, so SD 1.x/SDXL VAEs never overflow and need no fp32 retry. Otherwise the model's precision."""
    if no_half_vae:
        return torch.float32
    if dtype == torch.float16 and device.type == "cuda" and facts.cuda_bf16:
        return torch.bfloat16
    return dtype


# ------------------------------------------------------------------------------------------ out of memory

def next_decode_fallback(measures: Measures) -> Measures | None:
    """After an out-of-memory error while decoding: only the decode is retried, in tiles (the sampling that
    came before is kept)."""
    if not measures.vae_tiling:
        return _escalate(measures, "VAE tiling", vae_tiling=True)
    return None


def next_fallback(measures: Measures, batch_size: int, device: torch.device) -> Measures | None:
    """The next stronger measure after an out-of-memory error, or None when everything has been tried.

    Order: VAE tiling, attention slicing, model offload, sequential offload (GPU only: on the CPU the weights
    are in RAM anyway), then splitting the batch in halves until one image runs at a time."""
    if not measures.vae_tiling:
        return _escalate(measures, "VAE tiling", vae_tiling=True)
    if not measures.attention_slicing:
        return _escalate(measures, "attention slicing", attention_slicing=True)
    if device.type == "cuda" and measures.offload is Offload.NONE:
        return _escalate(measures, "model offload", offload=Offload.MODEL, compile=False)
    if device.type == "cuda" and measures.offload is Offload.MODEL:
        return _escalate(measures, "sequential offload", offload=Offload.SEQUENTIAL, compile=False)
    if measures.batch_split < batch_size:
        parts = min(batch_size, measures.batch_split * 2)
        return _escalate(measures, f"batch in {parts} parts", batch_split=parts)
    return None


def _escalate(measures: Measures, name: str, **changes) -> Measures:
    return replace(measures, fallbacks=(*measures.fallbacks, name), **changes)


# ------------------------------------------------------------------------------------------ model cache

def models_to_evict(sizes: list[int], max_models: int, max_bytes: int) -> int:
    """How many of the cached (inactive) models to evict, oldest first, so that at most `max_models` remain
    and together they take at most `max_bytes`. `sizes` are in least-recently-used-first order."""
    evict = max(0, len(sizes) - max_models)
    while evict < len(sizes) and sum(sizes[evict:]) > max_bytes:
        evict += 1
    return evict


def cache_budget_bytes(facts: DeviceFacts, requested_gb: float | None) -> int:
    """RAM for inactive cached models: as asked, else a third of the machine's RAM."""
    if requested_gb is not None:
        return int(requested_gb * GB)
    return facts.total_ram // 3
