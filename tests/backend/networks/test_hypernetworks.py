"""Hypernetworks in A1111's .pt format: keys and values of every attention layer with a matching context width
come from x + mlp(x) * multiplier; the reference wraps to_k / to_v of a copy of the tiny model."""

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from backend.generation.requests import GenerationRequest
from backend.networks.hypernetworks import HypernetPatcher, load_hypernetwork
from backend.settings import MemoryFlags
from tests.conftest import build_backend
from tests.fixtures.a1111_reference import a1111_txt2img
from tests.fixtures.reference import reference_conds

G = torch.Generator().manual_seed(11)
WIDTH = 64  # the tiny SD1's context width (cross-attention) and its mid block's width


def _mlp_state():
    return OrderedDict([("linear.0.weight", torch.randn(128, WIDTH, generator=G) * 0.1),
                        ("linear.0.bias", torch.randn(128, generator=G) * 0.1),
                        ("linear.2.weight", torch.randn(WIDTH, 128, generator=G) * 0.1),
                        ("linear.2.bias", torch.randn(WIDTH, generator=G) * 0.1)])


@pytest.fixture(scope="module")
def hypernet_models(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hn-models")
    (root / "Stable-diffusion").symlink_to(models_dir / "Stable-diffusion", target_is_directory=True)
    (root / "hypernetworks").mkdir()
    data = {WIDTH: [_mlp_state(), _mlp_state()], "layer_structure": [1, 2, 1], "activation_func": "relu",
            "is_layer_norm": False, "use_dropout": False, "activate_output": False, "name": "sparkle", "step": 100}
    torch.save(data, root / "hypernetworks" / "sparkle.pt")
    return root, data


def _wrapped(model, data, multiplier):
    merged = copy.deepcopy(model)
    k_state, v_state = data[WIDTH]

    def mlp(state):
        net = torch.nn.Sequential(torch.nn.Linear(WIDTH, 128), torch.nn.ReLU(), torch.nn.Linear(128, WIDTH))
        net.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        return net

    class Through(torch.nn.Module):
        def __init__(self, linear, net):
            super().__init__()
            self.linear, self.net = linear, net

        def forward(self, context):
            return self.linear(context + self.net(context) * multiplier)

    for module in merged.unet.modules():
        for name in ("to_k", "to_v"):
            linear = getattr(module, name, None)
            if isinstance(linear, torch.nn.Linear) and linear.in_features == WIDTH:
                setattr(module, name, Through(linear, mlp(k_state if name == "to_k" else v_state)))
    return merged


@pytest.mark.parametrize("slicing", [False, True])
def test_hypernetwork_equals_a1111s_rule_and_comes_off(hypernet_models, tiny, tmp_path, slicing):
    """Also under sliced attention: the hypernetworks hook the key/value projections, not the processor."""
    root, data = hypernet_models
    svc = build_backend(root, tmp_path / "out", memory=MemoryFlags(attention_slicing=slicing))
    try:
        base = dict(negative_prompt="ugly", steps=3, width=64, height=64, seed=3, sampler_name="Euler",
                    checkpoint="sd1.safetensors", save_images=False)
        plain = svc.generate(GenerationRequest(prompt="a cat", **base))
        ours = svc.generate(GenerationRequest(prompt="a cat <hypernet:sparkle:0.7>", **base))
        after = svc.generate(GenerationRequest(prompt="a cat", **base))
        missing = svc.generate(GenerationRequest(prompt="a cat <hypernet:nope:1>", **base))
    finally:
        svc.shutdown()
    model = _wrapped(tiny["sd1"], data, 0.7)
    cond, uncond = reference_conds(tiny["sd1"], "a cat", "ugly")
    expected = a1111_txt2img(model.unet, model.vae, cond, uncond, "Euler", None, 3, 7.0, [3], 64, 64)[0]
    px = lambda image: np.asarray(image, dtype=np.int16)  # noqa: E731
    assert np.abs(px(ours.images[0]) - px(expected)).max() <= 3
    assert "Hypernet: sparkle, Hypernet hash: " in ours.infotexts[0]
    assert np.array_equal(px(plain.images[0]), px(after.images[0]))
    assert missing.warnings == ["Hypernetwork not found: nope"]


def test_hypernetworks_survive_a_change_of_attention_processor(hypernet_models, tiny):
    """An out-of-memory fallback switches the UNet to sliced attention; the hypernetworks stay in effect."""
    root, _ = hypernet_models
    unet = copy.deepcopy(tiny["sd1"].unet)
    patcher = HypernetPatcher()
    patcher.apply(unet, [(load_hypernetwork(root / "hypernetworks" / "sparkle.pt"), 0.7)])
    x, context = torch.randn(1, 4, 8, 8, generator=G), torch.randn(1, 77, WIDTH, generator=G)
    with torch.no_grad():
        hooked = unet(x, 500, encoder_hidden_states=context).sample
        unet.set_attn_processor(AttnProcessor2_0())
        unet.set_attention_slice("auto")
        sliced = unet(x, 500, encoder_hidden_states=context).sample
        patcher.restore(unet)
        plain = unet(x, 500, encoder_hidden_states=context).sample
    assert torch.allclose(hooked, sliced, atol=1e-5)
    assert not torch.allclose(hooked, plain, atol=1e-3)
