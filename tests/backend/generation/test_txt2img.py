"""Our txt2img from the single-file checkpoints equals A1111's (k-diffusion's own sampler code driven as A1111
drives it; tests/fixtures/a1111_reference.py) on the same weights."""

import numpy as np
import pytest
import torch
from PIL import Image

from backend.generation.requests import GenerationRequest
from tests.fixtures.a1111_reference import a1111_txt2img
from tests.fixtures.reference import reference_conds, reference_pipeline

FILES = {"sd1": "sd1.safetensors", "sd2": "sd2-v.safetensors", "sdxl": "sdxl.safetensors"}


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _request(**kw) -> GenerationRequest:
    base = dict(prompt="a photo of a cat", negative_prompt="blurry", steps=4, width=64, height=64, seed=1234,
                save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def _a1111(model, sampler="Euler", schedule=None, prompt="a photo of a cat", negative="blurry", steps=4, seed=1234,
           v_prediction=None, negative_zeros=False):
    cond, uncond = reference_conds(model, prompt, negative, negative_zeros)
    v = model.v_prediction if v_prediction is None else v_prediction
    return a1111_txt2img(model.unet, model.vae, cond, uncond, sampler, schedule, steps, 7.0, [seed], 64, 64,
                         v_prediction=v, sdxl=model.family == "sdxl")[0]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M Karras"])
def test_equals_a1111(service, tiny, family, sampler):
    ours = service.generate(_request(checkpoint=FILES[family], sampler_name=sampler)).images[0]
    name, schedule = ("DPM++ 2M", "Karras") if sampler.endswith("Karras") else (sampler, None)
    expected = _a1111(tiny[family], name, schedule)
    assert np.abs(_pixels(ours) - _pixels(expected)).max() <= 3


def test_v_prediction_model_is_sampled_as_v(service, tiny):
    """Sampling the SD2-v file as epsilon would give another picture: the sidecar must have been honoured."""
    ours = _pixels(service.generate(_request(checkpoint=FILES["sd2"], sampler_name="Euler")).images[0])
    assert np.abs(ours - _pixels(_a1111(tiny["sd2"], v_prediction=False))).max() > 3


def test_same_request_gives_same_pixels(service):
    a = service.generate(_request(sampler_name="Euler a")).images[0]
    b = service.generate(_request(sampler_name="Euler a")).images[0]
    assert np.array_equal(_pixels(a), _pixels(b))


def test_batch_image_i_uses_seed_plus_i(service):
    batch = service.generate(_request(batch_size=2, n_iter=2, sampler_name="Euler"))
    assert batch.seeds == [1234, 1235, 1236, 1237]
    single = service.generate(_request(seed=1237, sampler_name="Euler")).images[0]
    assert np.abs(_pixels(batch.images[3]) - _pixels(single)).max() <= 1
    assert batch.grid is not None and batch.grid.size == (128, 128)


def test_random_seed_is_recorded(service):
    result = service.generate(_request(seed=-1))
    assert 0 <= result.seeds[0] < 2**32
    assert f"Seed: {result.seeds[0]}," in result.infotexts[0]


def test_long_prompt_is_not_truncated(service):
    """Past 75 tokens A1111 encodes further chunks instead of cutting the prompt: the tail must matter."""
    head = ", ".join(["a red house"] * 30)
    a = service.generate(_request(prompt=head + ", blue sky", sampler_name="Euler")).images[0]
    b = service.generate(_request(prompt=head + ", green grass", sampler_name="Euler")).images[0]
    assert not np.array_equal(_pixels(a), _pixels(b))


def test_clip_skip_changes_sd1_and_is_ignored_by_sd2_and_sdxl_as_in_a1111(service):
    a = service.generate(_request(checkpoint=FILES["sd1"], sampler_name="Euler", clip_skip=1))
    b = service.generate(_request(checkpoint=FILES["sd1"], sampler_name="Euler", clip_skip=2))
    assert not np.array_equal(_pixels(a.images[0]), _pixels(b.images[0]))
    assert "Clip skip: 2" in b.infotexts[0] and "Clip skip" not in a.infotexts[0]
    for family in ("sd2", "sdxl"):
        a = service.generate(_request(checkpoint=FILES[family], sampler_name="Euler", clip_skip=1))
        b = service.generate(_request(checkpoint=FILES[family], sampler_name="Euler", clip_skip=2))
        assert np.array_equal(_pixels(a.images[0]), _pixels(b.images[0])) and "Clip skip: 2" in b.infotexts[0]


def test_diffusers_folder_generates_like_the_single_file(service):
    folder = service.generate(_request(checkpoint="diffusers-sd1", sampler_name="Euler")).images[0]
    single = service.generate(_request(checkpoint=FILES["sd1"], sampler_name="Euler")).images[0]
    assert np.abs(_pixels(folder) - _pixels(single)).max() <= 2


def test_pickle_checkpoint_generates_like_the_safetensors(service):
    ckpt = service.generate(_request(checkpoint="sd1-pickle.ckpt", sampler_name="Euler")).images[0]
    single = service.generate(_request(checkpoint=FILES["sd1"], sampler_name="Euler")).images[0]
    assert np.array_equal(_pixels(ckpt), _pixels(single))


def _reference_embeds(model, prompt_chunks):
    """A1111's rules written out: each chunk [start, tokens, end, end...] through CLIP, times its weights,
    rescaled to the chunk's former mean, chunks concatenated."""
    parts = []
    for tokens, weights in prompt_chunks:
        ids = [49406, *tokens, 49407] + [49407] * (75 - len(tokens))
        hidden = model.text_encoders[0](torch.tensor([ids])).last_hidden_state
        w = torch.tensor([1.0, *weights] + [1.0] * (76 - len(weights)))
        weighted = hidden * w[None, :, None]
        parts.append(weighted * (hidden.mean() / weighted.mean()))
    return torch.cat(parts, dim=1)


def test_emphasis_break_and_long_prompts_equal_a1111s_rules(service, tiny):
    model = tiny["sd1"]
    tokenizer = reference_pipeline(model, "Euler", None).tokenizer

    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    prompt = "a (red:1.3) fox BREAK [forest], " + "tree " * 80
    long_tail = ids("tree " * 80)
    cond_chunks = [(ids("a red fox"), [1.0, 1.3, 1.0]),
                   (ids("forest, ") + long_tail[:73], [1 / 1.1] + [1.0] * 74),
                   (long_tail[73:], [1.0] * 7)]
    negative = "((blurry))"
    with torch.no_grad():
        cond = _reference_embeds(model, cond_chunks)
        uncond = _reference_embeds(model, [(ids("blurry"), [1.21])])  # one chunk: not padded to the cond's three
    expected = a1111_txt2img(model.unet, model.vae, {"context": cond}, {"context": uncond}, "Euler", None, 4, 7.0,
                             [1234], 64, 64)[0]
    ours = service.generate(_request(checkpoint=FILES["sd1"], sampler_name="Euler", prompt=prompt,
                                     negative_prompt=negative)).images[0]
    assert np.abs(_pixels(ours) - _pixels(expected)).max() <= 3


def test_and_and_prompt_editing_follow_a1111s_rules(service, tiny):
    """`a cat :1.2 AND a dog :0.8` with `[red:blue:2]`: guidance sums the weighted subprompts; the edit
    switches after step 2 (0-based index > 2)."""
    model = tiny["sd1"]
    pipe = reference_pipeline(model, "Euler", None)

    def embeds(text):
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        return model.text_encoders[0](ids).last_hidden_state

    with torch.no_grad():
        uncond, dog = {"context": embeds("")}, {"context": embeds(" a dog")}
        red, blue = {"context": embeds("a red cat")}, {"context": embeds("a blue cat")}
    # 4 Euler steps call the model 4 times; the edit switches after call 2 (0-based index > 2)
    expected = a1111_txt2img(model.unet, model.vae, lambda step: [(1.2, red if step <= 2 else blue), (0.8, dog)],
                             uncond, "Euler", None, 4, 7.0, [1234], 64, 64)[0]
    ours = service.generate(_request(checkpoint=FILES["sd1"], sampler_name="Euler", negative_prompt="",
                                     prompt="a [red:blue:2] cat :1.2 AND a dog :0.8")).images[0]
    assert np.abs(_pixels(ours) - _pixels(expected)).max() <= 3


def test_sdxl_empty_negative_prompt_is_zeros(service, tiny):
    expected = _a1111(tiny["sdxl"], negative="", negative_zeros=True)
    ours = service.generate(_request(checkpoint=FILES["sdxl"], sampler_name="Euler", negative_prompt="")).images[0]
    assert np.abs(_pixels(ours) - _pixels(expected)).max() <= 3


def test_sdxl_emphasis_weights_each_encoder_separately_and_never_the_pooled(service, tiny):
    model = tiny["sdxl"]
    pipe = reference_pipeline(model)
    ids = pipe.tokenizer("a red fox", add_special_tokens=False).input_ids
    weights = torch.tensor([1.0, 1.0, 1.3, 1.0] + [1.0] * 73)

    def one_encoder(encoder, pad):
        tokens = torch.tensor([[49406, *ids, 49407] + [pad] * (75 - len(ids))])
        out = encoder(tokens, output_hidden_states=True)
        hidden = out.hidden_states[-2]
        weighted = hidden * weights[None, :, None]
        return weighted * (hidden.mean() / weighted.mean()), getattr(out, "text_embeds", None)

    with torch.no_grad():
        l_hidden, _ = one_encoder(model.text_encoders[0], 49407)
        g_hidden, pooled = one_encoder(model.text_encoders[1], 0)
        cond = {"context": torch.cat([l_hidden, g_hidden], dim=-1), "pooled": pooled}
        _, uncond = reference_conds(model, "x", "blurry")
    expected = a1111_txt2img(model.unet, model.vae, cond, uncond, "Euler", None, 4, 7.0, [1234], 64, 64, sdxl=True)[0]
    ours = service.generate(_request(checkpoint=FILES["sdxl"], sampler_name="Euler", prompt="a (red:1.3) fox"))
    assert np.abs(_pixels(ours.images[0]) - _pixels(expected)).max() <= 3
