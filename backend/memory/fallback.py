"""Running a piece of work so that out-of-memory errors are retried with the next stronger measure."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

from backend.errors import OutOfMemory
from backend.memory.apply import release_memory
from backend.memory.policy import Measures, nan_retry_dtype, next_decode_fallback, next_fallback

log = logging.getLogger(__name__)

T = TypeVar("T")

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "failed to allocate")


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in _OOM_MESSAGES)


def _problem(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


def _out_of_memory(device: torch.device, problem: str, measures: Measures) -> OutOfMemory:
    tried = ", ".join(measures.fallbacks) or "no fallback applies"
    return OutOfMemory(f"Out of memory on {device.type} ({problem}). Tried: {tried}. "
                       "Use a smaller image size or batch size.")


def decode_with_fallbacks(decode: Callable[[torch.dtype | None], torch.Tensor], vae_dtype: torch.dtype,
                          measures: Measures, apply: Callable[[Measures], None],
                          device: torch.device, nan_check: bool = True) -> tuple[torch.Tensor, Measures]:
    """`decode(dtype)` -> pixels. Out of memory: retry only the decode with the next decode measure (`apply`
    puts it in place). Non-finite pixels from an fp16 VAE: decode once more in the policy's retry dtype."""
    while True:
        try:
            pixels = decode(None)
            break
        except Exception as err:  # noqa: BLE001 - everything but out-of-memory is re-raised
            if not is_out_of_memory(err):
                raise
            problem = _problem(err)
        release_memory()
        stronger = next_decode_fallback(measures)
        if stronger is None:
            raise _out_of_memory(device, problem, measures)
        log.warning("out of memory while decoding (%s); retrying with %s", problem, stronger.fallbacks[-1])
        measures = stronger
        apply(measures)
    retry_dtype = nan_retry_dtype(vae_dtype) if nan_check else None  # A1111's --disable-nan-check: none
    if retry_dtype is not None and not torch.isfinite(pixels).all():
        log.warning("the VAE produced NaN in %s; decoding again in %s", vae_dtype, retry_dtype)
        pixels = decode(retry_dtype)
    return pixels, measures


def run_with_fallbacks(attempt: Callable[[Measures], T], measures: Measures, batch_size: int,
                       device: torch.device) -> tuple[T, Measures]:
    """`attempt(measures)`; on out-of-memory, free memory and try again with the next fallback.
    Returns the result and the measures that worked; raises OutOfMemory when none is left."""
    while True:
        try:
            return attempt(measures), measures
        except Exception as err:  # noqa: BLE001 - everything but out-of-memory is re-raised
            if not is_out_of_memory(err):
                raise
            problem = _problem(err)
        # Outside the except block: the traceback, and the tensors its frames hold, are gone before freeing.
        release_memory()
        stronger = next_fallback(measures, batch_size, device)
        if stronger is None:
            raise _out_of_memory(device, problem, measures)
        log.warning("out of memory (%s); retrying with %s", problem, stronger.fallbacks[-1])
        measures = stronger
