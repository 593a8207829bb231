"""LoRA-family networks on tiny real-layout models: every format's image equals a reference where the deltas
are merged into the modules by A1111's formulas (written out here), exact restore, tags, hashes, listing."""

import copy
import dataclasses
import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.memory.policy import Offload
from backend.settings import MemoryFlags
from tests.conftest import build_backend
from tests.fixtures.a1111_reference import a1111_txt2img
from tests.fixtures.reference import max_pixel_diff, reference_conds

G = torch.Generator().manual_seed(7)


def _r(*shape, scale=0.3):
    return torch.randn(shape, generator=G) * scale


def _kohya(name, prefix="lora_unet_"):
    return prefix + name.replace(".", "_")


# ------------------------------------------------------------------ the files (kohya and LyCORIS layouts)

def _lora_file():
    """LoRA on attention (linear), LoCon on a 3x3 conv (conv down, 1x1 up), a 1x1 proj_in, the text encoder."""
    t = {}
    for name, (out, inp, kernel) in {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (32, 32, None),
                                     "mid_block.attentions.0.transformer_blocks.0.attn2.to_k": (64, 64, None),
                                     "down_blocks.0.resnets.0.conv1": (32, 32, 3),
                                     "down_blocks.0.attentions.0.proj_in": (32, 32, 1)}.items():
        rank = 4
        down = _r(rank, inp) if kernel is None else _r(rank, inp, kernel, kernel)
        up = _r(out, rank) if kernel is None else _r(out, rank, 1, 1)
        t[_kohya(name) + ".lora_down.weight"], t[_kohya(name) + ".lora_up.weight"] = down, up
        t[_kohya(name) + ".alpha"] = torch.tensor(2.0)
    te = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    t[te + ".lora_down.weight"], t[te + ".lora_up.weight"] = _r(8, 64), _r(64, 8)  # no alpha: scale 1
    return t


def _loha_file():
    key = _kohya("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v")
    # large enough that applying it moves pixels well past the parity tolerance (a test that can fail)
    return {key + ".hada_w1_a": _r(32, 4, scale=0.6), key + ".hada_w1_b": _r(4, 32, scale=0.6),
            key + ".hada_w2_a": _r(32, 4, scale=0.6), key + ".hada_w2_b": _r(4, 32, scale=0.6),
            key + ".alpha": torch.tensor(4.0)}


def _lokr_file():
    whole = _kohya("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k")
    factored = _kohya("up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2")
    return {whole + ".lokr_w1": _r(4, 4, scale=0.7), whole + ".lokr_w2": _r(8, 8, scale=0.7),
            factored + ".lokr_w1": _r(4, 8, scale=0.7), factored + ".lokr_w2_a": _r(8, 2, scale=0.7),
            factored + ".lokr_w2_b": _r(2, 16, scale=0.7), factored + ".alpha": torch.tensor(2.0)}


def _full_norm_dora_file():
    full = _kohya("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0")
    norm = "lora_te_text_model_encoder_layers_1_layer_norm1"
    dora = _kohya("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q")
    return {full + ".diff": _r(32, 32, scale=0.05), full + ".diff_b": _r(32, scale=0.05),
            norm + ".w_norm": _r(64, scale=0.1), norm + ".b_norm": _r(64, scale=0.1),
            dora + ".lora_down.weight": _r(4, 32), dora + ".lora_up.weight": _r(32, 4),
            dora + ".alpha": torch.tensor(4.0), dora + ".dora_scale": _r(1, 32).abs() + 1.0}


def _sdxl_file():
    """SDXL in kohya's original-layout names, and both text encoders."""
    t = {}
    for ldm in ("input_blocks.3.1.transformer_blocks.0.attn1.to_q", "middle_block.1.proj_in",
                "output_blocks.1.0.in_layers.2", "output_blocks.1.2.conv"):
        module_shapes = {"input_blocks.3.1.transformer_blocks.0.attn1.to_q": (128, 128, None),
                         "middle_block.1.proj_in": (128, 128, None), "output_blocks.1.0.in_layers.2": (128, 192, 3),
                         "output_blocks.1.2.conv": (128, 128, 3)}
        out, inp, kernel = module_shapes[ldm]
        down = _r(4, inp) if kernel is None else _r(4, inp, kernel, kernel)
        up = _r(out, 4) if kernel is None else _r(out, 4, 1, 1)
        t[_kohya(ldm) + ".lora_down.weight"], t[_kohya(ldm) + ".lora_up.weight"] = down, up
    key = "lora_te1_text_model_encoder_layers_0_self_attn_v_proj"
    t[key + ".lora_down.weight"], t[key + ".lora_up.weight"] = _r(4, 64), _r(64, 4)
    for part in ("q", "k", "v", "out"):  # OpenCLIP attention: A1111 applies it only with all four parts
        key = f"lora_te2_text_model_encoder_layers_0_self_attn_{part}_proj"
        t[key + ".lora_down.weight"], t[key + ".lora_up.weight"] = _r(4, 64), _r(64, 4)
    return t


SDXL_NAMES = {"input_blocks.3.1.transformer_blocks.0.attn1.to_q":
              "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
              "middle_block.1.proj_in": "mid_block.attentions.0.proj_in",
              "output_blocks.1.0.in_layers.2": "up_blocks.0.resnets.1.conv1",
              "output_blocks.1.2.conv": "up_blocks.0.upsamplers.0.conv"}


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("Lora")
    save_file(_lora_file(), str(folder / "style.safetensors"), metadata={"ss_output_name": "style_v1",
                                                                          "ss_tag_frequency": json.dumps({"a": 1})})
    loha = _loha_file()
    save_file(loha, str(folder / "loha.safetensors"))
    save_file(_lokr_file(), str(folder / "lokr.safetensors"), metadata={"sshs_model_hash": "abcdef0123456789"})
    save_file(_full_norm_dora_file(), str(folder / "mixed.safetensors"))
    save_file(_sdxl_file(), str(folder / "xl.safetensors"))
    torch.save(loha, folder / "pickled.pt")
    return folder


@pytest.fixture(scope="module")
def svc(models_dir, lora_dir, tmp_path_factory):
    service = build_backend(models_dir, tmp_path_factory.mktemp("out"), lora_dir=lora_dir)
    yield service
    service.shutdown()


# ------------------------------------------------------------------ the reference: A1111's formulas by hand

def _merge(model, tensors, te=1.0, unet=1.0, names=None):
    """Return a copy of the tiny model with every layer's delta merged in, following A1111's formulas."""
    merged = copy.deepcopy(model)
    layers = {}
    for key, value in tensors.items():
        layer, _, part = key.partition(".")
        layers.setdefault(layer, {})[part] = value.float()
    with torch.no_grad():
        for layer, p in layers.items():
            if layer.startswith("lora_te"):
                part = "te" if layer.startswith("lora_te_") else ("te0" if layer.startswith("lora_te1") else "te1")
                te_root = merged.text_encoders[0 if part in ("te", "te0") else 1]
                suffix = layer.split("text_model_", 1)[1]
                module = next(m for n, m in te_root.named_modules()
                              if n.removeprefix("text_model.").replace(".", "_") == suffix)
                mult = te
            else:
                plain = layer.removeprefix("lora_unet_")
                name = next(n for n, _ in merged.unet.named_modules() if n.replace(".", "_") == plain) \
                    if names is None else names[plain]
                module, mult = dict(merged.unet.named_modules())[name], unet
            w = module.weight
            if "lora_up.weight" in p:
                up, down = p["lora_up.weight"], p["lora_down.weight"]
                rank = down.shape[0]
                delta = (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)).reshape(w.shape)
                scale = p["alpha"].item() / rank if "alpha" in p else 1.0
                delta = delta * scale
                if "dora_scale" in p:
                    m = w + delta
                    column_norm = m.norm(dim=0, keepdim=True)
                    delta = m * (p["dora_scale"] / column_norm) - w
            elif "hada_w1_a" in p:
                delta = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])
                delta = delta * p["alpha"].item() / p["hada_w1_b"].shape[0]
            elif "lokr_w1" in p:
                w2 = p["lokr_w2"] if "lokr_w2" in p else p["lokr_w2_a"] @ p["lokr_w2_b"]
                delta = torch.kron(p["lokr_w1"], w2).reshape(w.shape)
                if "lokr_w2_b" in p:
                    delta = delta * p["alpha"].item() / p["lokr_w2_b"].shape[0]
            elif "diff" in p:
                delta = p["diff"]
                module.bias += p["diff_b"] * mult
            else:
                delta = p["w_norm"]
                module.bias += p["b_norm"] * mult
            w += delta * mult
    return merged


def _image(model, prompt="a cat", seed=3):
    cond, uncond = reference_conds(model, prompt, "ugly")
    return a1111_txt2img(model.unet, model.vae, cond, uncond, "Euler", None, 3, 7.0, [seed], 64, 64,
                         sdxl=model.family == "sdxl")[0]


def _ours(svc, prompt, checkpoint="sd1.safetensors", seed=3):
    return svc.generate(GenerationRequest(prompt=prompt, negative_prompt="ugly", steps=3, width=64, height=64,
                                          seed=seed, sampler_name="Euler", checkpoint=checkpoint, save_images=False))



# ------------------------------------------------------------------ tests

@pytest.mark.parametrize("name, builder", [("style", _lora_file), ("loha", _loha_file), ("lokr", _lokr_file),
                                           ("mixed", _full_norm_dora_file)])
def test_each_format_equals_a1111s_merge(svc, tiny, name, builder, lora_dir):
    from safetensors.torch import load_file

    tensors = load_file(str(lora_dir / f"{name}.safetensors"))
    expected = _image(_merge(tiny["sd1"], tensors, te=0.7, unet=0.7))
    ours = _ours(svc, f"a cat <lora:{name}:0.7>")
    assert max_pixel_diff(ours.images[0], expected) <= 3
    assert ours.warnings == []
    plain = _ours(svc, "a cat")
    assert max_pixel_diff(ours.images[0], plain.images[0]) > 3  # negative control: the network really acts


def test_separate_te_and_unet_weights_and_two_networks_at_once(svc, tiny, lora_dir):
    from safetensors.torch import load_file

    style, loha = load_file(str(lora_dir / "style.safetensors")), load_file(str(lora_dir / "loha.safetensors"))
    expected = _image(_merge(_merge(tiny["sd1"], style, te=0.4, unet=1.3), loha, te=0.5, unet=0.5))
    ours = _ours(svc, "a cat <lora:style:0.4:1.3> <lyco:loha:0.5>")
    assert max_pixel_diff(ours.images[0], expected) <= 3
    swapped = _image(_merge(_merge(tiny["sd1"], style, te=1.3, unet=0.4), loha, te=0.5, unet=0.5))
    assert max_pixel_diff(ours.images[0], swapped) > 3  # negative control: te and unet weights swapped
    named = _ours(svc, "a cat <lora:style:te=0.4:unet=1.3> <lyco:loha:0.5>")
    assert max_pixel_diff(named.images[0], ours.images[0]) == 0


def test_sdxl_original_layout_names_and_both_text_encoders(svc, tiny, lora_dir):
    from safetensors.torch import load_file

    tensors = load_file(str(lora_dir / "xl.safetensors"))
    names = {k.replace(".", "_"): v for k, v in SDXL_NAMES.items()}
    expected = _image(_merge(tiny["sdxl"], tensors, names=names))
    ours = _ours(svc, "a cat <lora:xl:1>", checkpoint="sdxl.safetensors")
    assert max_pixel_diff(ours.images[0], expected) <= 3 and ours.warnings == []
    assert max_pixel_diff(ours.images[0], _ours(svc, "a cat", checkpoint="sdxl.safetensors").images[0]) > 3


def test_plain_request_after_a_lora_is_exactly_the_plain_image(svc):
    plain = _ours(svc, "a cat")
    model = svc.models.get(svc.registry.find_checkpoint("sd1.safetensors"))
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    for i in range(10):
        _ours(svc, f"a cat <lora:{'style' if i % 2 else 'mixed'}:{0.3 + i / 10}>")
    after = _ours(svc, "a cat")
    assert max_pixel_diff(plain.images[0], after.images[0]) == 0
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())


def test_disable_extra_networks_removes_the_tags_without_applying_them(svc):
    """A1111's disable_extra_networks: the prompt is encoded without its <lora:...> tags, and no network is
    merged (the image is the plain one, while the same tag applied changes it)."""
    plain, applied = _ours(svc, "a cat"), _ours(svc, "a cat <lora:style:1>")
    assert max_pixel_diff(plain.images[0], applied.images[0]) > 3
    disabled = svc.generate(GenerationRequest(prompt="a cat <lora:style:1>", negative_prompt="ugly", steps=3,
                                              width=64, height=64, seed=3, sampler_name="Euler",
                                              checkpoint="sd1.safetensors", save_images=False,
                                              disable_extra_networks=True))
    assert max_pixel_diff(disabled.images[0], plain.images[0]) == 0
    assert "Lora hashes" not in disabled.infotexts[0] and "<lora:style:1>" in disabled.infotexts[0]


def test_unknown_names_change_nothing_and_are_reported(svc):
    plain = _ours(svc, "a cat")
    unknown = _ours(svc, "a cat<lora:nope:1>")
    assert max_pixel_diff(plain.images[0], unknown.images[0]) == 0
    assert unknown.warnings == ["Lora not found: nope"]
    hyper = _ours(svc, "a cat<hypernet:x:1>")
    assert hyper.warnings == ["Hypernetwork not found: x"]
    other = _ours(svc, "a cat<wildcard:x:1>")
    assert other.warnings == ["<wildcard:x:1>: wildcard networks are not supported; the tag was ignored"]


def test_a_network_for_another_architecture_is_refused(svc):
    with pytest.raises(InvalidRequest, match="'xl' does not fit this sd1 model \\(it is for SDXL\\)"):
        _ours(svc, "a cat <lora:xl:1>")


def test_infotext_keeps_tags_and_names_hashes(svc, lora_dir):
    result = _ours(svc, "a cat <lora:style_v1:0.5> <lora:lokr:1>")  # by alias, and a file with sshs_model_hash
    raw = (lora_dir / "style.safetensors").read_bytes()
    addnet = hashlib.sha256(raw[8 + int.from_bytes(raw[:8], "little"):]).hexdigest()[:12]
    assert result.infotexts[0].startswith("a cat <lora:style_v1:0.5> <lora:lokr:1>\n")
    assert f'Lora hashes: "style_v1: {addnet}, lokr: abcdef012345"' in result.infotexts[0]


def test_pickled_lora_loads_through_the_restricted_unpickler(svc):
    a = _ours(svc, "a cat <lora:pickled:0.8>")
    b = _ours(svc, "a cat <lora:loha:0.8>")
    assert max_pixel_diff(a.images[0], b.images[0]) == 0


def test_listing_parses_json_metadata(svc):
    listed = {n.name: n for n in svc.loras()}
    assert set(listed) >= {"style", "loha", "lokr", "mixed", "xl", "pickled"}
    assert listed["style"].alias == "style_v1" and listed["style"].metadata["ss_tag_frequency"] == {"a": 1}


def test_peft_format_and_dyn_and_finding_by_hash(svc, tiny, lora_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    style = load_file(str(lora_dir / "style.safetensors"))
    # the same LoRA as diffusers/peft saves it: module paths with lora_A / lora_B (alpha as a tensor)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    kohya = "lora_unet_" + name.replace(".", "_")
    peft = {f"unet.{name}.lora_A.weight": style[kohya + ".lora_down.weight"],
            f"unet.{name}.lora_B.weight": style[kohya + ".lora_up.weight"], f"unet.{name}.alpha": style[kohya + ".alpha"]}
    only_q = {k: v for k, v in style.items() if k.startswith(kohya)}
    save_file(peft, str(lora_dir / "peft_q.safetensors"))
    save_file(only_q, str(lora_dir / "kohya_q.safetensors"))
    svc.refresh_loras()
    try:
        a = _ours(svc, "a cat <lora:peft_q:0.9>")
        b = _ours(svc, "a cat <lora:kohya_q:0.9>")
        assert max_pixel_diff(a.images[0], b.images[0]) == 0 and a.warnings == []
        # dyn: only the first 2 ranks, with the same scale (a strong multiplier, so the ranks show in pixels)
        dyn = _ours(svc, "a cat <lora:kohya_q:6:6:2>")
        truncated = dict(only_q)
        truncated[kohya + ".lora_down.weight"] = only_q[kohya + ".lora_down.weight"][:2]
        truncated[kohya + ".lora_up.weight"] = only_q[kohya + ".lora_up.weight"][:, :2]
        merged = _merge(tiny["sd1"], truncated, te=6, unet=6)
        # A1111 keeps the scale alpha / full rank when dyn cuts ranks
        with torch.no_grad():
            module = dict(merged.unet.named_modules())[name]
            module.weight.copy_(dict(tiny["sd1"].unet.named_modules())[name].weight
                                + (module.weight - dict(tiny["sd1"].unet.named_modules())[name].weight) * 2 / 4)
        assert max_pixel_diff(dyn.images[0], _image(merged)) <= 3
        full_rank = _ours(svc, "a cat <lora:kohya_q:6:6>")
        assert max_pixel_diff(dyn.images[0], full_rank.images[0]) > 3  # control: the cut ranks matter
        # a pasted infotext's hash finds a network whose name changed
        digest = svc.networks.find("kohya_q").short_hash
        req = GenerationRequest(prompt="a cat <lora:renamed:0.9>", negative_prompt="ugly", steps=3, width=64, height=64,
                                seed=3, sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False,
                                network_hashes=(("renamed", digest),))
        by_hash = svc.generate(req)
        assert max_pixel_diff(by_hash.images[0], b.images[0]) == 0 and by_hash.warnings == []
    finally:
        for f in ("peft_q.safetensors", "kohya_q.safetensors"):
            (lora_dir / f).unlink()
        svc.refresh_loras()


def test_sdxl_lycoris_formats_equal_a1111s_merge(svc, tiny, lora_dir):
    """LoHa, LoKr, full and DoRA on SDXL layers named in the original layout."""
    from safetensors.torch import load_file

    q = _kohya("input_blocks.3.1.transformer_blocks.0.attn1.to_q")
    k = _kohya("input_blocks.3.1.transformer_blocks.0.attn1.to_k")
    v = _kohya("middle_block.1.proj_in")
    o = _kohya("input_blocks.3.1.transformer_blocks.0.attn1.to_out.0")
    tensors = {q + ".hada_w1_a": _r(128, 4), q + ".hada_w1_b": _r(4, 128), q + ".hada_w2_a": _r(128, 4),
               q + ".hada_w2_b": _r(4, 128), q + ".alpha": torch.tensor(2.0),
               k + ".lokr_w1": _r(8, 8), k + ".lokr_w2": _r(16, 16),
               v + ".diff": _r(128, 128, scale=0.02), v + ".diff_b": _r(128, scale=0.02),
               o + ".lora_down.weight": _r(4, 128), o + ".lora_up.weight": _r(128, 4), o + ".alpha": torch.tensor(4.0),
               o + ".dora_scale": _r(1, 128).abs() + 1.0}
    save_file(tensors, str(lora_dir / "xl_lyco.safetensors"))
    svc.refresh_loras()
    try:
        names = {"input_blocks_3_1_transformer_blocks_0_attn1_to_q":
                 "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
                 "input_blocks_3_1_transformer_blocks_0_attn1_to_k":
                 "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
                 "middle_block_1_proj_in": "mid_block.attentions.0.proj_in",
                 "input_blocks_3_1_transformer_blocks_0_attn1_to_out_0":
                     "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"}
        expected = _image(_merge(tiny["sdxl"], load_file(str(lora_dir / "xl_lyco.safetensors")), te=0.8, unet=0.8,
                                 names=names))
        ours = _ours(svc, "a cat <lora:xl_lyco:0.8>", checkpoint="sdxl.safetensors")
        assert max_pixel_diff(ours.images[0], expected) <= 3 and ours.warnings == []
        plain = _ours(svc, "a cat", checkpoint="sdxl.safetensors")
        assert max_pixel_diff(ours.images[0], plain.images[0]) > 3  # control: the networks do move pixels
    finally:
        (lora_dir / "xl_lyco.safetensors").unlink()
        svc.refresh_loras()


def test_openclip_attention_needs_all_four_parts_as_in_a1111(svc, lora_dir):
    """A LoRA with only v_proj for SDXL's second text encoder changes nothing there (A1111 applies OpenCLIP's
    fused attention only when q, k, v and out_proj are all given); a layer that exists nowhere is reported."""
    key = "lora_te2_text_model_encoder_layers_0_self_attn_v_proj"
    other = _kohya("input_blocks.3.1.transformer_blocks.0.attn1.to_q")
    save_file({key + ".lora_down.weight": _r(4, 64), key + ".lora_up.weight": _r(64, 4),
               other + ".lora_down.weight": _r(4, 128), other + ".lora_up.weight": _r(128, 4) * 0,
               "lora_unet_no_such_layer.lora_down.weight": _r(4, 8), "lora_unet_no_such_layer.lora_up.weight": _r(8, 4)},
              str(lora_dir / "v_only.safetensors"))
    svc.refresh_loras()
    try:
        plain = _ours(svc, "a cat", checkpoint="sdxl.safetensors")
        ours = _ours(svc, "a cat <lora:v_only:1>", checkpoint="sdxl.safetensors")
        assert max_pixel_diff(plain.images[0], ours.images[0]) == 0  # te2 untouched, the UNet delta is zero
        assert any("lack some of q, k, v and out_proj" in w for w in ours.warnings)
        assert any("1 of its 3 layers match nothing" in w for w in ours.warnings)
    finally:
        (lora_dir / "v_only.safetensors").unlink()
        svc.refresh_loras()


# ------------------------------------------------------------------ under the memory flags

@pytest.mark.parametrize("offload", [Offload.MODEL, Offload.SEQUENTIAL], ids=["medvram", "lowvram"])
def test_networks_under_offload_give_the_same_pixels(svc, offload):
    """--medvram (model offload) and --lowvram (sequential offload: the weights live in an offload map) merge
    the networks wherever the weights are: the same images as without the flag, and back to plain after."""
    plain, styled = _ours(svc, "a cat"), _ours(svc, "a cat <lora:style:0.8> <lora:loha:1>")
    active = svc.models._active  # on the CPU the policy never offloads: put the model in that state directly
    normal = active.plan
    active.plan = dataclasses.replace(normal, measures=dataclasses.replace(normal.measures, offload=offload))
    try:
        under_flag = _ours(svc, "a cat <lora:style:0.8> <lora:loha:1>")
        if offload is Offload.SEQUENTIAL:
            assert {p.device.type for p in active.model.unet.parameters()} == {"meta"}  # it really ran offloaded
        assert max_pixel_diff(under_flag.images[0], styled.images[0]) == 0
        assert max_pixel_diff(_ours(svc, "a cat").images[0], plain.images[0]) == 0
        assert max_pixel_diff(_ours(svc, "a cat <lora:style:0.8> <lora:loha:1>").images[0], styled.images[0]) == 0
    finally:
        active.plan = normal
        _ours(svc, "a cat")


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_networks_under_compile_recompile_without_a_stale_graph(models_dir, lora_dir, svc, tmp_path):
    """--compile (torch.compile, channels_last, frozen weights; on the CPU inductor's C++ backend) gives the eager
    image; it freezes the weights into the graph, so a network change takes them back and compiles anew."""
    plain, styled = _ours(svc, "a cat"), _ours(svc, "a cat <lora:style:1>")
    compiled = build_backend(models_dir, tmp_path, lora_dir=lora_dir, memory=MemoryFlags(compile=True))
    try:
        assert max_pixel_diff(_ours(compiled, "a cat").images[0], plain.images[0]) <= 2
        unet = compiled.models.loaded_model.unet
        assert unet._compiled_call_impl is not None and compiled.models.plan.measures.compile
        assert max_pixel_diff(_ours(compiled, "a cat <lora:style:1>").images[0], styled.images[0]) <= 2
        assert unet._compiled_call_impl is not None  # compiled again, with the merged weights
    finally:
        compiled.shutdown()
