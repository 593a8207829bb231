"""Initial noise as A1111's ImageRNG with RNG source CPU: variation seeds, seed resize, ENSD; and what they do
to images through the service."""

import numpy as np
import torch

from backend.generation.noise import ImageNoise, slerp
from backend.generation.requests import GenerationRequest

SHAPE = (4, 8, 8)


def _randn(seed, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def test_plain_noise_is_the_seeds_cpu_randn_and_generators_continue():
    rng = ImageNoise([3, 4])
    noise = rng.first(SHAPE)
    assert torch.equal(noise[0], _randn(3)) and torch.equal(noise[1], _randn(4))
    g = torch.Generator("cpu").manual_seed(3)
    torch.randn(SHAPE, generator=g)
    assert torch.equal(rng.next(SHAPE)[0], torch.randn(SHAPE, generator=g))


def _slerp_by_rotation(t: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """An independent derivation of A1111's blend for one pair of vectors: the angle from atan2 of the
    Gram-Schmidt components, and the weights rewritten with sin((1-t)w) = sin w cos tw - cos w sin tw, applied
    (as A1111 does) to the unnormalised vectors."""
    u, v = a / np.linalg.norm(a), b / np.linalg.norm(b)
    along = u @ v
    angle = np.arctan2(np.linalg.norm(v - along * u), along)
    weight_a = np.cos(t * angle) - np.sin(t * angle) * np.cos(angle) / np.sin(angle)
    return weight_a * a + np.sin(t * angle) / np.sin(angle) * b


def test_variation_seed_is_a1111s_slerp():
    """A1111 blends the seed's and the variation seed's noise per (channel, column): vectors along dim 1."""
    low, high = _randn(3), _randn(9)
    noise = ImageNoise([3], [9], 0.3).first(SHAPE)[0]
    lo, hi = low.double().numpy(), high.double().numpy()
    expected = np.empty_like(lo)
    for channel in range(lo.shape[0]):
        for column in range(lo.shape[2]):
            expected[channel, :, column] = _slerp_by_rotation(0.3, lo[channel, :, column], hi[channel, :, column])
    np.testing.assert_allclose(noise.double().numpy(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(slerp(1.0, low, high), high)
    torch.testing.assert_close(slerp(0.0, low, high), low)


def test_seed_resize_pastes_the_small_noise_in_the_middle():
    noise = ImageNoise([3], resize_from=(32, 48)).first(SHAPE)[0]  # 4x6 latents inside 8x8
    small, big = _randn(3, (4, 6, 4)), _randn(3)
    assert torch.equal(noise[:, 1:7, 2:6], small)
    assert torch.equal(noise[:, 0, :], big[:, 0, :]) and torch.equal(noise[:, :, 0], big[:, :, 0])
    larger = ImageNoise([3], resize_from=(96, 96)).first(SHAPE)[0]  # 12x12 cropped to its middle 8x8
    assert torch.equal(larger, _randn(3, (4, 12, 12))[:, 2:10, 2:10])


def test_ensd_reseeds_the_continuing_generators():
    rng = ImageNoise([3], ensd=31337)
    rng.first(SHAPE)
    assert torch.equal(rng.next(SHAPE)[0], _randn(3 + 31337))


def _req(**kw):
    base = dict(prompt="a hill", steps=3, width=64, height=64, seed=5, sampler_name="Euler", save_images=False,
                checkpoint="sd1.safetensors")
    return GenerationRequest(**{**base, **kw})


def _px(result):
    return np.asarray(result.images[0], dtype=np.int16)


def test_variation_seed_at_full_strength_is_the_variation_seeds_image(service):
    varied = service.generate(_req(subseed=9, subseed_strength=1.0))
    assert np.array_equal(_px(varied), _px(service.generate(_req(seed=9))))
    assert "Variation seed: 9, Variation seed strength: 1.0," in varied.infotexts[0]
    half = service.generate(_req(subseed=9, subseed_strength=0.5))
    assert not np.array_equal(_px(half), _px(varied)) and not np.array_equal(_px(half), _px(service.generate(_req())))


def test_seed_resize_and_ensd_and_tiling_reach_the_image_and_the_infotext(service):
    plain = service.generate(_req())
    resized = service.generate(_req(seed_resize_from_w=128, seed_resize_from_h=128))
    assert "Seed resize from: 128x128," in resized.infotexts[0] and not np.array_equal(_px(plain), _px(resized))
    ancestral = service.generate(_req(sampler_name="Euler a"))
    ensd = service.generate(_req(sampler_name="Euler a", eta_noise_seed_delta=31337))
    assert "ENSD: 31337" in ensd.infotexts[0] and not np.array_equal(_px(ancestral), _px(ensd))
    assert "ENSD" not in service.generate(_req(eta_noise_seed_delta=31337)).infotexts[0]  # Euler: no extra noise
    tiled = service.generate(_req(tiling=True))
    assert "Tiling: True" in tiled.infotexts[0] and not np.array_equal(_px(plain), _px(tiled))
    model = service.models.get(service.registry.find_checkpoint("sd1.safetensors"))
    assert all(m.padding_mode == "zeros" for m in model.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert np.array_equal(_px(plain), _px(service.generate(_req())))  # put back exactly


def test_seamless_decoder_wraps_around(service):
    """With circular padding the VAE is shift-equivariant: rolling the latents rolls the picture, i.e. the
    left and right edges meet as if tiled."""
    from backend.generation.tiling import seamless

    model = service.models.get(service.registry.find_checkpoint("sd1.safetensors"))
    latents = _randn(1, (1, 4, 8, 8))
    with torch.no_grad(), seamless([model.vae], True):
        image = model.vae.decode(latents).sample
        rolled = model.vae.decode(torch.roll(latents, 3, dims=3)).sample
    torch.testing.assert_close(rolled, torch.roll(image, 3 * 8, dims=3), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        plain_rolled = model.vae.decode(torch.roll(latents, 3, dims=3)).sample
    assert not torch.allclose(plain_rolled, torch.roll(model.vae.decode(latents).sample, 24, dims=3), atol=1e-3)


def test_nv_source_gives_cudas_randn_numbers():
    """torch.manual_seed(0); torch.randn((3, 4), device="cuda") (documented in A1111's rng_philox.py)."""
    from backend.generation.philox import PhiloxGenerator

    cuda_seed_0 = np.array([[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                            [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                            [-1.07454231, -0.36314407, -1.67105067, 2.26550497]])
    generator = PhiloxGenerator(0)
    assert np.abs(generator.randn((3, 4)) - cuda_seed_0).max() < 1e-6
    assert not np.allclose(generator.randn((3, 4)), cuda_seed_0)  # the next draw continues the stream
    noise = ImageNoise([0], source="NV").first((1, 3, 4))[0, 0].numpy()
    assert np.abs(noise - cuda_seed_0).max() < 1e-6


def test_rng_source_reaches_the_image_and_the_infotext(service):
    import pytest

    from backend.errors import InvalidRequest

    cpu, nv = service.generate(_req()), service.generate(_req(rng_source="NV"))
    assert "RNG: CPU" in cpu.infotexts[0] and "RNG: NV" in nv.infotexts[0]
    assert not np.array_equal(_px(cpu), _px(nv))
    if not torch.cuda.is_available():
        with pytest.raises(InvalidRequest, match="NV gives the same"):
            service.submit(_req(rng_source="GPU"))
