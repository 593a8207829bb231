"""An interrupted image is A1111's: the last denoised estimate (its sampler's `last_latent`, the callback's
`denoised`), not the noisy latents of that step. The reference stops k-diffusion's own samplers (and A1111's
DDIM) at the same step."""

import inspect

import pytest
import torch

from backend.errors import Interrupted
from backend.generation.requests import GenerationRequest
from backend.generation.txt2img import prepare_txt2img
from backend.samplers import resolve
from tests.fixtures.a1111_reference import a1111_latents, a1111_timestep_latents
from tests.fixtures.reference import reference_conds

STOP_AFTER = 3  # steps done when the user interrupts


class _StopAt:
    """The job's hooks: interrupted once STOP_AFTER steps are done; keeps what the step reported."""

    def __init__(self):
        self.latents = None

    def report_step(self, step, steps, latents=None):
        self.latents = latents
        if step >= STOP_AFTER:
            raise Interrupted("interrupted by the user")

    def check_interrupt(self):
        pass


def _interrupted(service, sampler):
    model = service.models.get(service.registry.find_checkpoint("sd1.safetensors"))
    req = GenerationRequest(prompt="a lighthouse at dusk", negative_prompt="fog", steps=8, width=64, height=64,
                            seed=21, sampler_name=sampler, checkpoint="sd1.safetensors", save_images=False)
    hooks = _StopAt()
    with pytest.raises(Interrupted):
        prepare_txt2img(model, req, resolve(sampler, None), [21]).denoise(hooks)
    return hooks.latents


class _Stop(Exception):
    pass


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Euler a"])
def test_k_diffusion_interrupt_keeps_the_last_denoised_estimate(service, tiny, sampler):
    ours = _interrupted(service, sampler)
    seen = []

    def callback(d):
        seen.append(d["denoised"])
        if d["i"] + 1 >= STOP_AFTER:
            raise _Stop

    model = tiny["sd1"]
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    with pytest.raises(_Stop):
        a1111_latents(model.unet, cond, uncond, sampler, None, 8, 7.0, [21], 64, 64, callback=callback)
    assert torch.allclose(ours, seen[-1], atol=2e-3), (ours - seen[-1]).abs().max()
    assert not torch.allclose(ours, seen[-2], atol=2e-2)  # negative control: one step earlier differs


def test_ddim_interrupt_keeps_the_predicted_clean_latents(service, tiny):
    ours = _interrupted(service, "DDIM")
    seen = []
    model = tiny["sd1"]
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    a1111_timestep_latents(model.unet, cond, uncond, "DDIM", 8, 7.0, [21], 64, 64,
                           callback=lambda i, x0: seen.append(x0))
    assert torch.allclose(ours, seen[STOP_AFTER - 1], atol=2e-3), (ours - seen[STOP_AFTER - 1]).abs().max()
    assert not torch.allclose(ours, seen[STOP_AFTER], atol=2e-2)


class _StopInsideTheUnet(_StopAt):
    """Interrupted during the first model call: between two of the UNet's blocks, before any step ends."""

    def __init__(self):
        super().__init__()
        self.checks = 0  # checks made from the UNet's block hooks (text encoding checks too, elsewhere)
        self.steps = 0

    def report_step(self, step, steps, latents=None):
        self.steps += 1

    def check_interrupt(self):
        if any(f.function == "<lambda>" and f.filename.endswith("sample.py") for f in inspect.stack()[1:3]):
            self.checks += 1
            if self.checks >= 3:
                raise Interrupted("interrupted by the user")


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_an_interrupt_does_not_wait_for_the_step_to_end(service, sampler):
    """A huge step (the largest allowed request on a CPU) is not waited for: the UNet checks between its
    blocks. The hooks are gone afterwards."""
    model = service.models.get(service.registry.find_checkpoint("sd1.safetensors"))
    req = GenerationRequest(prompt="a lighthouse", steps=8, width=64, height=64, seed=21, sampler_name=sampler,
                            checkpoint="sd1.safetensors", save_images=False)
    hooks = _StopInsideTheUnet()
    with pytest.raises(Interrupted):
        prepare_txt2img(model, req, resolve(sampler, None), [21]).denoise(hooks)
    assert hooks.steps == 0 and hooks.checks == 3
    blocks = [*model.unet.down_blocks, model.unet.mid_block, *model.unet.up_blocks]
    assert all(not block._forward_pre_hooks for block in blocks)


def test_an_interrupt_during_a_long_decode_keeps_the_batches_before(service):
    """The decode of a large batch on a CPU takes minutes: the decoder checks between its blocks, and the
    batches decoded before stay in the result."""
    model = service.models.get(service.registry.find_checkpoint("sd1.safetensors"))
    req = GenerationRequest(prompt="a lighthouse", steps=3, width=64, height=64, seed=21, sampler_name="Euler",
                            checkpoint="sd1.safetensors", save_images=False, n_iter=3)
    decodes = []
    job = None

    def cancel_in_second_decode(module, args):
        decodes.append(1)
        if len(decodes) == 2:
            job.cancel()  # the user interrupts while batch 2 is being decoded

    handle = model.vae.decoder.mid_block.register_forward_pre_hook(cancel_in_second_decode)
    try:
        job = service.submit(req)
        result = job.wait(120)
    finally:
        handle.remove()
    assert result.interrupted and len(result.images) == 1 and result.seeds == [21]
    blocks = [model.vae.decoder.mid_block, *model.vae.decoder.up_blocks]
    assert all(len(block._forward_pre_hooks) == 0 for block in blocks)
