"""Out-of-memory recovery through the real service: an allocation failure is injected into the real UNet (or VAE)
at a chosen step, and the job must retry with the next measure, say so in the infotext, or fail cleanly."""

import numpy as np
import pytest
import torch

from backend.errors import OutOfMemory
from backend.generation.requests import GenerationRequest
from backend.memory.fallback import is_out_of_memory
from tests.conftest import build_backend


class FailingAllocations:
    """Raise a CUDA-style out-of-memory error on the `at_call`-th call of a module, `times` times over."""

    def __init__(self, module: torch.nn.Module, at_call: int, times: int):
        self.at_call, self.times = at_call, times
        self.calls = self.failures = 0
        self.handle = module.register_forward_pre_hook(self._maybe_fail)

    def _maybe_fail(self, module, args):
        self.calls += 1
        if self.calls == self.at_call and self.failures < self.times:
            self.failures += 1
            self.calls = 0  # the retried batch starts counting again
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (simulated)")

    def remove(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def svc(models_dir, tmp_path_factory):
    service = build_backend(models_dir, tmp_path_factory.mktemp("out"))
    yield service
    service.shutdown()


@pytest.fixture
def model(svc):
    return svc.models.get(svc.registry.find_checkpoint("sd1.safetensors"))


def _req(**kw):
    base = dict(prompt="a red barn", steps=4, width=64, height=64, seed=11, sampler_name="Euler",
                checkpoint="sd1.safetensors", save_images=False)
    return GenerationRequest(**{**base, **kw})


def _px(result):
    return [np.asarray(i, dtype=np.int16) for i in result.images]


def test_one_failure_at_step_3_retries_with_vae_tiling(svc, model):
    baseline = svc.generate(_req())
    assert "Memory fallback" not in baseline.infotexts[0]
    failing = FailingAllocations(model.unet, at_call=3, times=1)
    try:
        result = svc.generate(_req())
    finally:
        failing.remove()
    assert failing.failures == 1
    assert "Memory fallback: VAE tiling," in result.infotexts[0]
    assert np.array_equal(_px(result)[0], _px(baseline)[0])  # same seed, same image: 64x64 is below a tile


def test_repeated_failures_climb_the_ladder_to_a_batch_split(svc, model):
    baseline = svc.generate(_req(batch_size=2))
    failing = FailingAllocations(model.unet, at_call=2, times=3)
    try:
        result = svc.generate(_req(batch_size=2, n_iter=2))
    finally:
        failing.remove()
    expected = "Memory fallback: VAE tiling + attention slicing + batch in 2 parts,"
    assert all(expected in text for text in result.infotexts) and len(result.images) == 4
    assert result.seeds == [11, 12, 13, 14]
    for got, want in zip(_px(result)[:2], _px(baseline), strict=True):
        assert np.abs(got - want).max() <= 1  # sliced attention and halves of the batch: the same images
    # the next job starts again from the plan's measures
    assert "Memory fallback" not in svc.generate(_req()).infotexts[0]
    assert not model.applied_measures.attention_slicing


def test_failure_in_the_vae_decode_retries_only_the_decode(svc, model):
    baseline = svc.generate(_req())
    unet_calls = []
    counting = model.unet.register_forward_pre_hook(lambda *a: unet_calls.append(1))
    failing = FailingAllocations(model.vae.decoder, at_call=1, times=1)
    try:
        result = svc.generate(_req())
    finally:
        failing.remove()
        counting.remove()
    assert failing.failures == 1 and "Memory fallback: VAE tiling," in result.infotexts[0]
    assert len(unet_calls) == 4  # the 4 sampling steps ran once: only the decode was retried
    assert np.array_equal(_px(result)[0], _px(baseline)[0])


def test_when_every_measure_fails_the_user_gets_a_clear_error_and_the_service_goes_on(svc, model):
    failing = FailingAllocations(model.unet, at_call=1, times=100)
    try:
        with pytest.raises(OutOfMemory) as caught:
            svc.generate(_req(batch_size=2))
    finally:
        failing.remove()
    message = str(caught.value)
    assert message.startswith("Out of memory on cpu (CUDA out of memory. Tried to allocate 20.00 MiB (simulated))")
    assert "Tried: VAE tiling, attention slicing, batch in 2 parts" in message
    assert "smaller image size or batch size" in message
    assert failing.failures == 4  # the first attempt and three fallbacks
    assert len(svc.generate(_req()).images) == 1


def test_other_errors_are_not_mistaken_for_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))
