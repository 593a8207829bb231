"""No host-device synchronisation inside the step loop: nothing reads a device value per step (`.item()`,
`.cpu()`, `.tolist()`, `.numpy()`, a tensor's truth or float value). On a GPU each would wait for the queued work
and leave the device idle. Counted with a torch function mode around sampling: doubling the steps must not add
a single such call (what remains is read once per run, before the loop)."""

from __future__ import annotations

import collections
import dataclasses

import pytest
from torch.overrides import TorchFunctionMode

from backend.generation import sampling
from backend.generation.requests import GenerationRequest
from backend.generation.txt2img import prepare_txt2img
from backend.samplers import SAMPLERS, resolve

SYNCS = {"item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"}
# DPM adaptive chooses its own steps from the error it measures: reading it is the algorithm.
EXEMPT = {"DPM adaptive"}


class CountSyncs(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCS:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def model(service):
    return service.models.get(service.registry.find_checkpoint("sd1.safetensors"))


def _syncs(model, resources, req: GenerationRequest, steps: int) -> collections.Counter:
    req = dataclasses.replace(req, steps=steps)
    work = prepare_txt2img(model, req, resolve(req.sampler_name, None), [5], resources)
    counter = CountSyncs()
    with counter:
        work.denoise(sampling.NoHooks())
    return counter.calls


@pytest.mark.parametrize("name", [s.name for s in SAMPLERS if s.name not in EXEMPT])
def test_no_sync_per_step(service, model, name):
    req = GenerationRequest(prompt="a red kite", steps=3, width=32, height=32, seed=5, sampler_name=name,
                            save_images=False)
    _syncs(model, service.resources, req, 3)  # prompt encodings cached, as in a warm server
    few, many = _syncs(model, service.resources, req, 3), _syncs(model, service.resources, req, 6)
    assert many == few, f"{name}: {dict(many - few)} more reads of device values for 3 more steps"


def test_churn_decides_on_the_host(service, model):
    req = GenerationRequest(prompt="a red kite", steps=3, width=32, height=32, seed=5, sampler_name="Euler",
                            s_churn=0.5, s_tmin=0.5, s_tmax=10.0, save_images=False)
    _syncs(model, service.resources, req, 3)
    assert _syncs(model, service.resources, req, 6) == _syncs(model, service.resources, req, 3)
