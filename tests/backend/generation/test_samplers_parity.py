"""Every k-diffusion sampler A1111 1.10 lists, with every schedule type, equals A1111's image: the reference runs
k-diffusion's own sampling.py as A1111 drives it (tests/fixtures/a1111_reference.py), RNG source CPU."""

import pytest

from backend.generation.requests import GenerationRequest
from tests.fixtures.a1111_reference import OPTIONS, a1111_txt2img
from tests.fixtures.reference import max_pixel_diff, reference_conds

SCHEDULES = [None, "Uniform", "Karras", "Exponential", "SGM Uniform"]


def _ours(service, checkpoint, sampler, schedule, seed=21, batch=1, steps=8, **kw):
    req = GenerationRequest(prompt="a lighthouse at dusk", negative_prompt="fog", steps=steps, width=64, height=64,
                            seed=seed, batch_size=batch, sampler_name=sampler, scheduler=schedule or "Automatic",
                            checkpoint=checkpoint, save_images=False, **kw)
    return service.generate(req)


def _theirs(model, sampler, schedule, seeds, steps=8, **kwargs):
    cond, uncond = reference_conds(model, "a lighthouse at dusk", "fog")
    return a1111_txt2img(model.unet, model.vae, cond, uncond, sampler, schedule, steps, 7.0, seeds, 64, 64,
                         v_prediction=model.v_prediction, sdxl=model.family == "sdxl", **kwargs)



@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler", list(OPTIONS))
def test_sd1_sampler_and_schedule_equal_a1111(service, tiny, sampler, schedule):
    ours = _ours(service, "sd1.safetensors", sampler, schedule)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, schedule, [21])[0]) <= 3
    if schedule is None:  # negative control: another seed is another picture
        assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, schedule, [22])[0]) > 3
    default = OPTIONS[sampler][1]  # A1111 writes "Automatic" for a sampler without a schedule of its own
    expected_label = schedule or (default if default != "Uniform" else "Automatic")
    assert f"Sampler: {sampler}, Schedule type: {expected_label}," in ours.infotexts[0]


@pytest.mark.parametrize("sampler", list(OPTIONS))
def test_sdxl_sampler_equals_a1111(service, tiny, sampler):
    ours = _ours(service, "sdxl.safetensors", sampler, None)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sdxl"], sampler, None, [21])[0]) <= 3
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sdxl"], sampler, None, [22])[0]) > 3  # control: seed


@pytest.mark.parametrize("schedule", SCHEDULES[1:])
def test_sdxl_schedule_types_equal_a1111(service, tiny, schedule):
    for sampler in ("Euler a", "DPM++ 2M"):
        ours = _ours(service, "sdxl.safetensors", sampler, schedule)
        assert max_pixel_diff(ours.images[0], _theirs(tiny["sdxl"], sampler, schedule, [21])[0]) <= 3, sampler
        assert max_pixel_diff(ours.images[0], _theirs(tiny["sdxl"], sampler, schedule, [22])[0]) > 3  # control


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ SDE", "DPM++ 3M SDE", "DPM2 a"])
def test_sd2_v_equals_a1111(service, tiny, sampler):
    ours = _ours(service, "sd2-v.safetensors", sampler, None)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd2"], sampler, None, [21])[0]) <= 3
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd2"], sampler, None, [21], steps=7)[0]) > 3  # control


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M SDE"])
def test_batches_use_each_images_own_noise(service, tiny, sampler):
    ours = _ours(service, "sd1.safetensors", sampler, None, seed=40, batch=2)
    theirs = _theirs(tiny["sd1"], sampler, None, [40, 41])
    assert all(max_pixel_diff(a, b) <= 3 for a, b in zip(ours.images, theirs, strict=True))
    assert max_pixel_diff(ours.images[1], theirs[0]) > 3  # control: the second image has its own noise


def test_ancestral_noise_continues_the_images_generator(service):
    """Reseeding the extra noise (ENSD) changes an ancestral image but not Euler's."""
    plain = _ours(service, "sd1.safetensors", "Euler a", None)
    ensd = _ours(service, "sd1.safetensors", "Euler a", None, eta_noise_seed_delta=31337)
    assert max_pixel_diff(plain.images[0], ensd.images[0]) > 3
    euler = _ours(service, "sd1.safetensors", "Euler", None)
    assert max_pixel_diff(euler.images[0], _ours(service, "sd1.safetensors", "Euler", None,
                                            eta_noise_seed_delta=31337).images[0]) == 0


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM2"])
def test_sigma_churn_options_equal_a1111(service, tiny, sampler):
    options = dict(s_churn=0.8, s_tmin=0.3, s_tmax=9.0, s_noise=1.01)
    ours = _ours(service, "sd1.safetensors", sampler, None, **options)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, None, [21], **options)[0]) <= 3
    assert "Sigma churn: 0.8, Sigma tmin: 0.3, Sigma tmax: 9.0, Sigma noise: 1.01" in ours.infotexts[0]
    assert max_pixel_diff(ours.images[0], _ours(service, "sd1.safetensors", sampler, None).images[0]) > 3


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE"])
def test_eta_and_s_noise_equal_a1111(service, tiny, sampler):
    ours = _ours(service, "sd1.safetensors", sampler, None, eta=0.6, s_noise=0.97)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, None, [21], eta=0.6, s_noise=0.97)[0]) <= 3
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], sampler, None, [22], eta=0.6, s_noise=0.97)[0]) > 3
    assert "Eta: 0.6" in ours.infotexts[0] and "Sigma noise: 0.97" in ours.infotexts[0]


@pytest.mark.parametrize("steps", [20, 36])
def test_restart_climbs_back_as_a1111(service, tiny, steps):
    """From 20 steps Restart re-plans its schedule and climbs back up with fresh noise (twice from 36 steps)."""
    ours = _ours(service, "sd1.safetensors", "Restart", None, steps=steps, s_noise=1.02)
    assert max_pixel_diff(ours.images[0], _theirs(tiny["sd1"], "Restart", None, [21], steps=steps, s_noise=1.02)[0]) <= 3
    plain_heun = _ours(service, "sd1.safetensors", "Heun", "Karras", steps=steps)
    assert max_pixel_diff(ours.images[0], plain_heun.images[0]) > 3

