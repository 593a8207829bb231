"""Token merging as A1111 applies tomesd (self-attention only, no randomness, full-resolution blocks): the
block computes u(attn1(m(norm1(x)))) + x with the merge chosen from the block's input."""

import dataclasses

import numpy as np
import torch
from tomesd.merge import bipartite_soft_matching_random2d

from backend.generation.requests import GenerationRequest
from backend.generation.token_merging import token_merging


def _req(**kw):
    base = dict(prompt="a lighthouse", steps=3, width=64, height=64, seed=3, sampler_name="Euler",
                checkpoint="sd1.safetensors", save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def test_a_block_merges_its_self_attention_as_tomesd(tiny):
    unet = tiny["sd1"].unet
    block = next(m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock")
    torch.manual_seed(0)
    x, context = torch.randn(2, 64, block.norm1.normalized_shape[0]), torch.randn(2, 77, 64)
    with torch.no_grad():
        merge, unmerge = bipartite_soft_matching_random2d(x, 8, 8, 2, 2, int(64 * 0.5), no_rand=True)
        h = unmerge(block.attn1(merge(block.norm1(x)))) + x
        h = block.attn2(block.norm2(h), encoder_hidden_states=context) + h
        expected = block.ff(block.norm3(h)) + h
        plain = block(x, encoder_hidden_states=context)
        with token_merging(unet, 0.5):
            unet(torch.zeros(1, 4, 8, 8), 1, encoder_hidden_states=context[:1])  # the latent's size: 8 x 8
            merged = block(x, encoder_hidden_states=context)
    assert torch.allclose(merged, expected, atol=1e-5) and not torch.allclose(merged, plain, atol=1e-3)
    assert not block._forward_pre_hooks and not block.attn1._forward_hooks  # gone afterwards


def test_generation_with_a_ratio_and_its_infotext(service):
    plain = service.generate(_req())
    merged = service.generate(_req(token_merging_ratio=0.5))
    assert np.abs(np.asarray(plain.images[0], dtype=np.int16) - np.asarray(merged.images[0], dtype=np.int16)).max() > 3
    assert "Token merging ratio: 0.5" in merged.infotexts[0] and "Token merging" not in plain.infotexts[0]
    hires = dict(enable_hr=True, hr_upscaler="Latent", denoising_strength=0.5)
    text = service.generate(_req(token_merging_ratio=0.3, token_merging_ratio_hr=0.6, **hires)).infotexts[0]
    assert "Token merging ratio: 0.3, Token merging ratio hr: 0.6" in text
    img2img = _req(init_image=plain.images[0], token_merging_ratio=0.3, token_merging_ratio_img2img=0.5)
    assert img2img.tome_ratio() == 0.5 and dataclasses.replace(img2img, token_merging_ratio_img2img=0).tome_ratio() == 0.3
