"""What a job runs with, owned by the worker thread: the device, each component's precision, the VAE's precision
state and the memory measures in force. Every VAE encode and decode goes through `encode`/`decode` here, one
guarded path: out of memory -> the decode measures' tiled retry; non-finite output from a half-precision VAE ->
A1111's automatic switch of the VAE to fp32 for as long as the server runs ("Automatically revert VAE to 32-bit
floats", `auto_vae_precision`); with that option off, a clear error, never a black picture.

The memory policy chooses devices and precisions (backend/memory/policy.py); this object only carries them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image

from backend.errors import PrecisionError
from backend.memory.fallback import decode_with_fallbacks
from backend.memory.policy import Measures

log = logging.getLogger(__name__)

UNET_NAN_MESSAGE = ("The UNet produced NaN: there is not enough precision to represent the picture in {dtype}, or "
                    "this device does not support half precision. Start with --no-half (or --upcast-sampling), or "
                    "use --disable-nan-check to keep such pictures.")
VAE_NAN_MESSAGE = ("The VAE produced NaN in {dtype}. Turn on the setting \"Automatically revert VAE to 32-bit "
                   "floats\" (auto_vae_precision), or start with --no-half-vae; --disable-nan-check keeps such "
                   "pictures.")


@dataclass
class ExecutionContext:
    device: torch.device
    dtype: torch.dtype  # UNet and text encoders
    vae_dtype: torch.dtype
    nan_check: bool = True  # A1111's --disable-nan-check turns it off
    upcast_sampling: bool = False  # A1111's --upcast-sampling: the UNet's half-precision calls under autocast
    auto_vae_precision: Callable[[], bool] = lambda: True  # the option, read at the moment it matters
    on_vae_upcast: Callable[[], None] = lambda: None  # the model manager keeps fp32 VAEs from then on
    apply_measures: Callable[[Measures], None] = lambda measures: None
    measures: Measures = field(default_factory=Measures)  # the running batch's; a decode may strengthen them
    vae_upcasts: int = 0  # how often the automatic fp32 switch happened (once per server at most)

    @classmethod
    def of_model(cls, model) -> ExecutionContext:
        """For running a model outside the worker (tests, benchmarks): its own device and precisions."""
        return cls(model.execution_device, model.dtype, model.vae.dtype)

    # ---------------------------------------------------------------- the VAE, guarded

    @torch.no_grad()
    def decode(self, model, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in -1..1 (float32, on the execution device)."""

        def run(vae):
            scaled = latents / vae.config.scaling_factor
            return vae.decode(scaled.to(model.execution_device, vae.dtype)).sample.float()

        return self._guarded(model, run, lambda pixels: pixels)

    @torch.no_grad()
    def encode(self, model, pixels: torch.Tensor):
        """Pixels in -1..1 (NCHW) -> the VAE's latent distribution (its `mean`, `std` and `mode()`), unscaled."""

        def run(vae):
            return vae.encode(pixels.to(model.execution_device, vae.dtype)).latent_dist

        return self._guarded(model, run, lambda dist: dist.parameters)

    def encode_images(self, model, images: list[Image.Image]):
        array = np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for i in images])
        return self.encode(model, torch.from_numpy(array).permute(0, 3, 1, 2))

    def _guarded(self, model, run, tensor_of):
        out = self._with_decode_fallbacks(lambda: run(model.vae))
        if not self.nan_check or bool(torch.isfinite(tensor_of(out)).all()):
            return out
        vae_dtype = model.vae.dtype
        if vae_dtype != torch.float16 or not self.auto_vae_precision():
            raise PrecisionError(VAE_NAN_MESSAGE.format(dtype=_name(vae_dtype)))
        self.upcast_vae(model)
        out = self._with_decode_fallbacks(lambda: run(model.vae))
        if not bool(torch.isfinite(tensor_of(out)).all()):
            raise PrecisionError(VAE_NAN_MESSAGE.format(dtype="fp32"))
        return out

    def _with_decode_fallbacks(self, run):
        out, self.measures = decode_with_fallbacks(run, self.measures, self.apply_measures, self.device)
        return out

    def upcast_vae(self, model) -> None:
        """A1111's automatic revert: this VAE, and every VAE loaded from now on, runs in fp32."""
        log.warning("The VAE produced NaN in fp16; it runs in fp32 from now on (as A1111's \"Automatically revert "
                    "VAE to 32-bit floats\"). Start with --no-half-vae to skip the failed half-precision attempt.")
        self.vae_dtype = torch.float32
        model.vae.to(torch.float32)
        self.on_vae_upcast()
        self.vae_upcasts += 1

    # ---------------------------------------------------------------- the UNet's output

    def check_unet_output(self, latents: torch.Tensor, dtype: torch.dtype) -> None:
        """One check per sampling pass (not per step: each would wait for the device), as A1111's NaN test."""
        if self.nan_check and not bool(torch.isfinite(latents).all()):
            raise PrecisionError(UNET_NAN_MESSAGE.format(dtype=_name(dtype)))


def _name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))
