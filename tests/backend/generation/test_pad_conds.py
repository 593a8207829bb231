"""A1111's pad_cond_uncond options: a prompt and a negative prompt of different lengths run in one batch."""

import torch

from backend.generation import loop
from backend.generation.requests import GenerationRequest
from backend.prompts.encode import Conditioning
from tests.fixtures.reference import max_pixel_diff

LONG = "a lighthouse at dusk, " * 20  # two 75-token chunks


class _RecordingUnet(torch.nn.Module):
    """Stands in for the UNet in a unit test of the guidance: records the contexts it is called with."""

    def __init__(self):
        super().__init__()
        self.contexts = []

    def forward(self, sample, t, encoder_hidden_states=None, return_dict=False, **kwargs):
        self.contexts.append(encoder_hidden_states)
        return (sample * encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None],)


def _cond(length, value):
    return Conditioning(torch.full((1, length, 4), float(value)), None)


def _denoiser(pad, cond_len, uncond_len):
    unet = _RecordingUnet()
    cond = loop.PromptConds([(1.0, [(10, _cond(cond_len, 1))])])
    uncond = loop.PromptConds([(1.0, [(10, _cond(uncond_len, 2))])])
    empty = _cond(77, 3)
    return unet, loop.Denoiser(unet, cond, uncond, 7.0, torch.float32, pad_conds=pad, empty=empty)


def test_v0_repeats_the_uncond_last_vector_or_cuts_it():
    unet, denoiser = _denoiser("v0", 154, 77)
    denoiser(torch.ones(1, 4, 8, 8), torch.tensor([500.0]), 0)
    assert len(unet.contexts) == 1 and unet.contexts[0].shape == (2, 154, 4)  # one batch
    assert torch.equal(unet.contexts[0][0], torch.full((154, 4), 2.0))
    unet, denoiser = _denoiser("v0", 77, 154)
    denoiser(torch.ones(1, 4, 8, 8), torch.tensor([500.0]), 0)
    assert unet.contexts[0].shape == (2, 77, 4)


def test_pad_appends_the_empty_prompts_chunks_to_the_shorter_side():
    for cond_len, uncond_len in ((154, 77), (77, 231)):
        unet, denoiser = _denoiser("pad", cond_len, uncond_len)
        denoiser(torch.ones(1, 4, 8, 8), torch.tensor([500.0]), 0)
        (context,) = unet.contexts
        length = max(cond_len, uncond_len)
        assert context.shape == (2, length, 4)
        shorter = 0 if uncond_len < cond_len else 1  # uncond first, then cond
        assert torch.equal(context[shorter, min(cond_len, uncond_len):], torch.full((length - 77, 4), 3.0))
    unet, denoiser = _denoiser("", 154, 77)
    denoiser(torch.ones(1, 4, 8, 8), torch.tensor([500.0]), 0)
    assert len(unet.contexts) == 2  # off: separate calls, as A1111 without the options


def _ours(service, **kw):
    fields = dict(prompt=LONG, negative_prompt="fog", steps=6, width=64, height=64, seed=21, sampler_name="Euler",
                  checkpoint="sd1.safetensors", save_images=False, cfg_scale=12.0)
    return service.generate(GenerationRequest(**{**fields, **kw}))


def test_pad_equals_a_negative_prompt_ending_in_an_empty_chunk(service):
    """An independent check on the real model: "pad" appends the empty prompt's chunk to the one-chunk negative
    prompt, which is what a negative prompt closed by BREAK and followed by an empty chunk encodes to."""
    padded = _ours(service, pad_conds="pad")
    assert "Pad conds: True" in padded.infotexts[0]
    same = _ours(service, negative_prompt="fog BREAK BREAK")
    assert max_pixel_diff(padded.images[0], same.images[0]) <= 1
    assert max_pixel_diff(padded.images[0], _ours(service).images[0]) > 1  # negative control: unpadded
    v0 = _ours(service, pad_conds="v0")
    assert "Pad conds v0: True" in v0.infotexts[0] and max_pixel_diff(v0.images[0], padded.images[0]) > 1


def test_batch_cond_uncond_off_makes_separate_calls_with_the_same_image(service):
    unet = _RecordingUnet()
    conds = loop.PromptConds([(1.0, [(10, _cond(77, 1))])])
    denoiser = loop.Denoiser(unet, conds, loop.PromptConds([(1.0, [(10, _cond(77, 2))])]), 7.0, torch.float32,
                             batch_cond_uncond=False)
    denoiser(torch.ones(1, 4, 8, 8), torch.tensor([500.0]), 0)
    assert [c.shape[0] for c in unet.contexts] == [1, 1]
    separate = _ours(service, prompt="a lighthouse", batch_cond_uncond=False)
    assert max_pixel_diff(separate.images[0], _ours(service, prompt="a lighthouse").images[0]) <= 1
    assert max_pixel_diff(separate.images[0], _ours(service, prompt="a lighthouse", seed=99).images[0]) > 3
