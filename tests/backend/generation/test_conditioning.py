import torch

from backend.generation.conditioning import PromptEncoder
from backend.loading.loader import load_model


def test_a_repeated_prompt_runs_the_text_encoder_once(models_dir):
    model = load_model(models_dir / "Stable-diffusion" / "sdxl.safetensors", torch.float32)
    calls = []
    for encoder in model.text_encoders:
        encoder.register_forward_hook(lambda *_: calls.append(1))
    first = model.prompt_encoder.encode(["a red fox"] * 3, clip_skip=1, chunks=1)  # a batch of one prompt
    assert len(calls) == 2  # once per text encoder
    again = model.prompt_encoder.encode(["a red fox"], clip_skip=1, chunks=1)  # the next job, same prompt
    assert len(calls) == 2
    model.prompt_encoder.encode(["a red fox"], clip_skip=2, chunks=1)
    assert len(calls) == 4  # a different clip skip is a different conditioning
    uncached = PromptEncoder(model.family, model.tokenizers, model.text_encoders, model.execution_device)
    fresh = uncached.encode(["a red fox"], clip_skip=1, chunks=1)
    assert torch.equal(again.embeds, fresh.embeds) and torch.equal(again.pooled, fresh.pooled)
    assert torch.equal(first.embeds[2], fresh.embeds[0])
