"""Running a piece of work so that out-of-memory errors are retried with the next stronger measure."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

from backend.errors import OutOfMemory
from backend.memory.apply import release_memory
from backend.memory.policy import Measures, next_decode_fallback, next_fallback

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


def decode_with_fallbacks(decode: Callable[[], T], measures: Measures, apply: Callable[[Measures], None],
                          device: torch.device) -> tuple[T, Measures]:
    """`decode()`; on out-of-memory, retry only the VAE's work with the next decode measure (`apply` puts it in
    place). The NaN check and precision fallback are the caller's (backend/execution.py)."""
    while True:
        try:
            return decode(), measures
        except Exception as err:  # noqa: BLE001 - everything but out-of-memory is re-raised
            if not is_out_of_memory(err):
                raise
            problem = _problem(err)
        release_memory()
        stronger = next_decode_fallback(measures)
        if stronger is None:
            raise _out_of_memory(device, problem, measures)
        log.warning("out of memory in the VAE (%s); retrying with %s", problem, stronger.fallbacks[-1])
        measures = stronger
        apply(measures)


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
