"""Carries out the measures the policy chose on a loaded model: attention kernels, VAE slicing/tiling, CPU offload,
torch.compile. Only what differs from the measures already in place is changed."""

from __future__ import annotations

import ctypes
import gc
import logging

import torch
import torch._dynamo
import torch._inductor.config
from accelerate import cpu_offload
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import send_to_device
from diffusers.models.attention_processor import AttnProcessor2_0

from backend.memory.cpu_prepack import prepack_convolutions, unpack_convolutions
from backend.memory.policy import Measures, Offload

log = logging.getLogger(__name__)

CPU = torch.device("cpu")


class OneOnDevice:
    """Model offload: of a group of modules, only the one in use is on the device; the others wait in RAM."""

    def __init__(self, device: torch.device):
        self.device = device
        self.resident: torch.nn.Module | None = None

    def bring(self, module: torch.nn.Module) -> None:
        if self.resident is module:
            return
        if self.resident is not None:
            self.resident.to(CPU)
        module.to(self.device)
        self.resident = module


class BringOnUse(ModelHook):
    """An accelerate hook, so that diffusers' `apply_forward_hook` also fires it for `vae.encode`/`vae.decode`."""

    def __init__(self, group: OneOnDevice):
        self.group = group
        self.execution_device = group.device  # read by DiffusionPipeline._execution_device

    def pre_forward(self, module, *args, **kwargs):
        self.group.bring(module)
        return send_to_device(args, self.execution_device), send_to_device(kwargs, self.execution_device)


def apply_measures(model, measures: Measures, device: torch.device) -> None:
    """Bring `model` (a LoadedModel) into the state `measures` describe, on `device`."""
    before: Measures | None = model.applied_measures
    if before is None or (before.attention, before.attention_slicing) != (measures.attention, measures.attention_slicing):
        _set_compile(model.unet, False)  # new attention processors would make a compiled UNet recompile anyway
        for module in (model.unet, model.vae):
            _set_attention(module, measures)
    if before is None or before.offload != measures.offload:
        _set_compile(model.unet, False)
        _set_prepack(model, False)  # offload hooks wrap `forward`: they must see the plain one
        _place(model, measures.offload, device)
    _set_compile(model.unet, measures.compile)
    _set_prepack(model, measures.prepacked_conv and measures.offload is Offload.NONE)
    _set_vae(model.vae, measures)
    model.applied_measures = measures


def replace_vae(model, vae: torch.nn.Module, device: torch.device) -> None:
    """Swap the model's VAE for `vae`, keeping the measures in place (without recompiling the UNet)."""
    measures: Measures | None = model.applied_measures
    if measures is None:
        model.use_vae(vae)
    elif measures.offload is not Offload.NONE:
        park(model)  # the offload hooks manage a fixed set of modules: rebuild them around the new VAE
        model.use_vae(vae)
        apply_measures(model, measures, device)
    else:
        model.use_vae(vae.to(device))
        _set_attention(vae, measures)
        _set_prepack(model, measures.prepacked_conv)
        _set_vae(vae, measures)


def park(model) -> None:
    """Take the model off the device entirely (it stays in RAM, for the model cache)."""
    _set_compile(model.unet, False)
    _set_prepack(model, False)
    _place(model, Offload.NONE, CPU)
    model.applied_measures = None


def _set_attention(module: torch.nn.Module, measures: Measures) -> None:
    if measures.attention == "xformers":
        module.enable_xformers_memory_efficient_attention()
    else:
        module.set_attn_processor(AttnProcessor2_0())
    if measures.attention_slicing and hasattr(module, "set_attention_slice"):
        module.set_attention_slice("auto")  # the UNet; the VAE's single attention layer is left whole


def _set_vae(vae, measures: Measures) -> None:
    vae.enable_slicing() if measures.vae_slicing else vae.disable_slicing()
    vae.enable_tiling() if measures.vae_tiling else vae.disable_tiling()


def _place(model, offload: Offload, device: torch.device) -> None:
    for module in model.modules():
        remove_hook_from_module(module, recurse=True)  # puts sequentially offloaded weights back in RAM
    if offload is Offload.NONE:
        for module in model.modules():
            module.to(device)
    elif offload is Offload.MODEL:
        group = OneOnDevice(device)
        for module in model.modules():
            module.to(CPU)
            add_hook_to_module(module, BringOnUse(group))
    else:
        for module in [model.unet, *model.text_encoders]:
            module.to(CPU)
            cpu_offload(module, execution_device=device)
        # The VAE is small; it keeps whole-module offload so its fp16 -> fp32 overflow retry still works.
        model.vae.to(CPU)
        add_hook_to_module(model.vae, BringOnUse(OneOnDevice(device)))
    model.execution_device = device
    release_memory()


def _set_prepack(model, on: bool) -> None:
    for module in (model.unet, model.vae):
        prepack_convolutions(module) if on else unpack_convolutions(module)


def _set_compile(unet: torch.nn.Module, on: bool) -> None:
    compiled = getattr(unet, "_compiled_call_impl", None) is not None
    if on:
        # Freezing lets inductor treat weights as constants (packed once for oneDNN on the CPU); inference only.
        # Inductor's settings are per thread (context variables), and compilation happens at the first call, in
        # the thread that generates: this runs there before every batch. Without it a CPU step is ~35% slower.
        torch._inductor.config.freezing = True
    if on and not compiled:
        unet.to(memory_format=torch.channels_last)
        unet.compile()
    elif compiled and not on:
        unet._compiled_call_impl = None  # what nn.Module.compile() set: calls go to the plain module again
        unet.to(memory_format=torch.contiguous_format)
        # Dynamo's cache lives on the code object, not the module: with frozen weights a later compile could
        # reuse a graph holding the old ones (networks merged since). Only the UNet is ever compiled.
        torch._dynamo.reset()


def configure_math(device: torch.device) -> None:
    """As A1111: TF32 matmuls and convolutions on NVIDIA GPUs that have them (Ampere and later; a no-op before),
    about 2x faster fp32 work (the fp32 VAE, upscalers) at no visible cost."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def release_memory() -> None:
    """Give freed memory back: Python garbage, PyTorch's CUDA cache, and glibc's heap (else RSS only grows)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc
