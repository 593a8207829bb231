"""Each memory measure carried out for real on a tiny model (on the CPU, offload runs the GPU code path with the
CPU as the execution device): the images stay the same and undoing a measure restores the model."""

import threading

import numpy as np
import pytest
import torch

from backend.generation.requests import GenerationRequest
from backend.generation import sampling
from backend.generation.txt2img import prepare_txt2img
from backend.memory.apply import BringOnUse, apply_measures
from backend.memory.facts import probe_device_facts
from backend.memory.policy import Measures, Offload
from backend.samplers import resolve
from tests.conftest import build_backend

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model(models_dir, tmp_path_factory):
    svc = build_backend(models_dir, tmp_path_factory.mktemp("out"))
    yield svc.models.get(svc.registry.find_checkpoint("sd1.safetensors"))
    svc.shutdown()


def _generate(model, measures: Measures, batch: int = 1, prompt: str = "a lighthouse"):
    apply_measures(model, measures, CPU)
    req = GenerationRequest(prompt=prompt, steps=3, width=64, height=64, batch_size=batch, sampler_name="Euler")
    work = prepare_txt2img(model, req, resolve("Euler", None), list(range(7, 7 + batch)))
    images = sampling.make_images(model, work)
    return [np.asarray(i, dtype=np.int16) for i in images]


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("measures", [
    Measures(offload=Offload.MODEL),
    Measures(offload=Offload.SEQUENTIAL),
    Measures(attention_slicing=True, vae_tiling=True, vae_slicing=True),
], ids=["model-offload", "sequential-offload", "slicing-and-tiling"])
def test_measure_keeps_the_image(model, measures):
    baseline = _generate(model, Measures(), batch=2)
    assert np.abs(_generate(model, measures, batch=2)[1] - baseline[1]).max() <= 1
    _generate(model, Measures())
    assert not any(hasattr(m, "_hf_hook") for mod in model.modules() for m in mod.modules())


def test_sequential_offload_keeps_weights_off_the_module_and_restores_them(model):
    before = _weights(model.unet)
    apply_measures(model, Measures(offload=Offload.SEQUENTIAL), CPU)
    assert {p.device.type for p in model.unet.parameters()} == {"meta"}  # weights live in the offload map
    _generate(model, Measures(offload=Offload.SEQUENTIAL))
    apply_measures(model, Measures(), CPU)
    after = _weights(model.unet)
    assert {p.device.type for p in model.unet.parameters()} == {"cpu"}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_model_offload_brings_each_component_when_it_is_used(model):
    apply_measures(model, Measures(offload=Offload.MODEL), CPU)
    hook = model.unet._hf_hook
    assert isinstance(hook, BringOnUse) and model.vae._hf_hook.group is hook.group
    used = []
    for part in model.modules():
        part.register_forward_hook(lambda m, args, out: used.append((m, hook.group.resident)))
    _generate(model, Measures(offload=Offload.MODEL), prompt="a prompt no other test encoded")
    # the text encoder was resident while it ran, then the UNet; vae.decode (not forward) brought the VAE
    assert used and all(module is resident for module, resident in used)
    order = [m for i, (m, _) in enumerate(used) if i == 0 or used[i - 1][0] is not m]
    assert order == [model.text_encoders[0], model.unet]
    assert hook.group.resident is model.vae
    apply_measures(model, Measures(), CPU)
    for part in model.modules():
        part._forward_hooks.clear()


def test_attention_slicing_is_set_and_removed(model):
    apply_measures(model, Measures(attention_slicing=True), CPU)
    kinds = {type(p).__name__ for p in model.unet.attn_processors.values()}
    assert kinds == {"SlicedAttnProcessor"}
    apply_measures(model, Measures(), CPU)
    assert {type(p).__name__ for p in model.unet.attn_processors.values()} == {"AttnProcessor2_0"}


@pytest.mark.skipif(not probe_device_facts().mkldnn, reason="this processor cannot pack bf16 convolutions")
def test_prepacked_convolutions_on_bf16_cpu_match_and_come_off(models_dir, tmp_path):
    svc = build_backend(models_dir, tmp_path / "out", precision="bf16")
    model = svc.models.get(svc.registry.find_checkpoint("sd1.safetensors"))
    assert model.applied_measures.prepacked_conv  # the policy's choice for bf16 on a CPU with oneDNN
    packed = _generate(model, Measures(prepacked_conv=True))[0]
    convs = [m for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m._packed is not None for m in convs)
    plain = _generate(model, Measures())[0]
    assert not any("forward" in vars(m) for m in convs)
    diff = np.abs(packed - plain)  # the same convolutions through another kernel: only bf16 rounding differs
    assert diff.mean() < 2 and diff.max() <= 16
    svc.shutdown()


def test_compile_turns_on_weight_freezing_in_the_thread_that_generates(model):
    # Inductor's settings are per thread; the generation worker, not the thread that loaded the model, compiles.
    import torch._inductor.config as inductor

    seen = {}

    def worker():
        apply_measures(model, Measures(compile=True), CPU)
        seen["freezing"] = inductor.freezing

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    apply_measures(model, Measures(), CPU)
    assert seen["freezing"] is True
    assert getattr(model.unet, "_compiled_call_impl", None) is None  # undone: calls go to the plain module again
