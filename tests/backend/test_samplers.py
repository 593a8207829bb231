import dataclasses

import pytest

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.options import request_fields
from backend.samplers import SAMPLERS, SCHEDULES, resolve


@pytest.mark.parametrize("name", [s.name for s in SAMPLERS])
def test_every_sampler_resolves_builds_and_runs(service, name):
    result = service.generate(GenerationRequest(prompt="x", sampler_name=name, steps=3, width=64, height=64,
                                                seed=5, checkpoint="sd1.safetensors", save_images=False))
    assert result.images[0].size == (64, 64)
    assert f"Sampler: {name}," in result.infotexts[0]


def test_automatic_schedule_resolves_to_the_samplers_default():
    assert resolve("DPM++ 2M").schedule == "Karras"
    assert resolve("DPM++ 2M SDE", "Automatic").schedule == "Exponential"
    assert resolve("Euler").schedule == "Uniform"


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_every_schedule_type_resolves(schedule):
    resolved = resolve("Euler", schedule)
    assert resolved.schedule == ("Uniform" if schedule == "Automatic" else schedule)
    assert resolve("DDIM", schedule).schedule == "Uniform"  # timestep samplers keep A1111's DDPM timesteps


def test_legacy_combined_names_split():
    resolved = resolve("DPM++ 2M Karras")
    assert (resolved.sampler.name, resolved.schedule) == ("DPM++ 2M", "Karras")
    resolved = resolve("Euler a")
    assert (resolved.sampler.name, resolved.schedule) == ("Euler a", "Uniform")
    assert resolve("k_euler_a").sampler.name == "Euler a"


def test_unknown_names_are_invalid_requests():
    with pytest.raises(InvalidRequest, match="sampler_name"):
        resolve("Nope")
    with pytest.raises(InvalidRequest, match="scheduler"):
        resolve("Euler", "Weird")


def test_eta_option_follows_the_kind_of_the_sampler_that_runs():
    req = GenerationRequest(**request_fields({"eta_ddim": 0.3, "eta_ancestral": 0.8}))
    assert req.eta is None and req.eta_for(ddim=True) == 0.3 and req.eta_for(ddim=False) == 0.8
    own = dataclasses.replace(req, eta=0.5)  # the request's own eta, whatever the sampler
    assert own.eta_for(ddim=True) == own.eta_for(ddim=False) == 0.5
