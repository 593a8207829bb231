import torch

from backend.prompts.encode import PromptEncoder, encoder_for
from backend.loading.loader import load_model


def test_a_repeated_prompt_runs_the_text_encoder_once(models_dir):
    model = load_model(models_dir / "Stable-diffusion" / "sdxl.safetensors", torch.float32)
    calls = []
    for encoder in model.text_encoders:
        encoder.register_forward_hook(lambda *_: calls.append(1))
    first = encoder_for(model).encode(["a red fox"] * 3, clip_skip=1, chunks=1)  # a batch of one prompt
    assert len(calls) == 2  # once per text encoder
    again = encoder_for(model).encode(["a red fox"], clip_skip=1, chunks=1)  # the next job, same prompt
    assert len(calls) == 2
    encoder_for(model).encode(["a red fox"], clip_skip=2, chunks=1)
    assert len(calls) == 2  # SDXL ignores clip skip (A1111), so this is the same conditioning
    encoder_for(model, "No norm").encode(["a red fox"], clip_skip=1, chunks=1)
    assert len(calls) == 4  # another emphasis mode is another conditioning
    uncached = PromptEncoder(model.family, model.tokenizers, model.text_encoders, model.execution_device)
    fresh = uncached.encode(["a red fox"], clip_skip=1, chunks=1)
    assert torch.equal(again.embeds, fresh.embeds) and torch.equal(again.pooled, fresh.pooled)
    assert torch.equal(first.embeds[2], fresh.embeds[0])


def _chunks_of(encoder, prompt):
    return [(c.tokens, c.weights) for c in encoder.chunks(prompt)]


def test_chunks_break_and_comma_backtracking(models_dir):
    model = load_model(models_dir / "Stable-diffusion" / "sd1.safetensors", torch.float32)
    encoder = encoder_for(model)
    tokenize = encoder.tokenizers[0]
    cat, comma = tokenize("cat", add_special_tokens=False).input_ids[0], encoder.comma
    # 70 tokens, a comma, then 10 more: the chunk is cut right after the comma (within 20 tokens of its end)
    chunks = _chunks_of(encoder, "cat " * 70 + ", " + "cat " * 10)
    assert [len(t) for t, _ in chunks] == [71, 10] and chunks[0][0][-1] == comma
    # a comma further back than 20 tokens: cut at 75
    chunks = _chunks_of(encoder, "cat " * 30 + ", " + "cat " * 60)
    assert [len(t) for t, _ in chunks] == [75, 16]
    # BREAK closes a chunk even when it is short
    chunks = _chunks_of(encoder, "cat BREAK (cat:1.5)")
    assert chunks == [([cat], [1.0]), ([cat], [1.5])]
    assert _chunks_of(encoder, "") == [([], [])]


def _reference_original_emphasis(model, tokens, weights):
    """A1111's rule by hand: hidden states of [start, tokens, end, pad...], times the weights, rescaled so
    the chunk's mean is what it was."""
    ids = [49406, *tokens, 49407] + [49407] * (75 - len(tokens))
    hidden = model.text_encoders[0](torch.tensor([ids])).last_hidden_state
    w = torch.tensor([1.0, *weights] + [1.0] * (76 - len(weights)))
    weighted = hidden * w[None, :, None]
    return weighted * (hidden.mean() / weighted.mean())


def test_original_emphasis_rescales_each_chunk_mean(models_dir):
    model = load_model(models_dir / "Stable-diffusion" / "sd1.safetensors", torch.float32)
    encoder = PromptEncoder(model.family, model.tokenizers, model.text_encoders, model.execution_device)
    tokens = encoder.tokenizers[0]("a cat on a mat", add_special_tokens=False).input_ids
    got = encoder.encode(["a (cat:1.5) on [a mat]"], clip_skip=1, chunks=1).embeds
    expected = _reference_original_emphasis(model, tokens, [1.0, 1.5, 1.0, 1 / 1.1, 1 / 1.1])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    plain = encoder.encode(["a cat on a mat"], clip_skip=1, chunks=1).embeds
    assert not torch.allclose(got, plain)
    none = PromptEncoder(model.family, model.tokenizers, model.text_encoders, model.execution_device,
                         emphasis="None").encode(["a (cat:1.5) on [a mat]"], clip_skip=1, chunks=1).embeds
    torch.testing.assert_close(none, plain)
