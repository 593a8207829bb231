"""VAE choice, prediction-type override, fp16 files and the fp16 VAE overflow guard."""

import shutil

import numpy as np
import pytest
import torch


from backend.generation.requests import GenerationRequest
from tests.conftest import build_backend
from tests.fixtures import tiny_models
from tests.fixtures.a1111_reference import a1111_txt2img
from tests.fixtures.reference import reference_conds


def _req(**kw):
    base = dict(prompt="a cat", steps=3, width=64, height=64, seed=4, sampler_name="Euler", save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def _px(image):
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def own_models(tmp_path_factory, models_dir):
    """A models folder of our own: one checkpoint, a VAE file, a sidecar VAE, an fp16 copy."""
    root = tmp_path_factory.mktemp("choices") / "models"
    ckpts = root / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copy(models_dir / "Stable-diffusion" / "sd1.safetensors", ckpts / "plain.safetensors")
    shutil.copy(models_dir / "Stable-diffusion" / "sd1.safetensors", ckpts / "with-sidecar.safetensors")
    shutil.copy(models_dir / "Stable-diffusion" / "sd2-v.safetensors", ckpts / "sd2.safetensors")
    other = tiny_models.make_sd1(seed=99)
    vae = {k.removeprefix("first_stage_model."): v for k, v in tiny_models.ldm_state_dict(other).items()
           if k.startswith("first_stage_model.")}
    from safetensors.torch import save_file

    (root / "VAE").mkdir()
    save_file(vae, str(root / "VAE" / "other.safetensors"))
    save_file(vae, str(ckpts / "with-sidecar.vae.safetensors"))
    tiny_models.write_checkpoint(tiny_models.make_sd1(seed=1), ckpts / "half.safetensors", dtype=torch.float16)
    return root


@pytest.fixture(scope="module")
def svc(own_models, tmp_path_factory):
    service = build_backend(own_models, tmp_path_factory.mktemp("out"),
                            prediction_overrides={"sd2.safetensors": "epsilon"})
    yield service
    service.shutdown()


def test_vae_file_and_sidecar_change_the_decode(svc):
    plain = svc.generate(_req(checkpoint="plain.safetensors"))
    with_vae = svc.generate(_req(checkpoint="plain.safetensors", vae="other.safetensors"))
    assert not np.array_equal(_px(plain.images[0]), _px(with_vae.images[0]))
    assert "VAE: other.safetensors" in with_vae.infotexts[0] and "VAE hash: " in with_vae.infotexts[0]
    sidecar = svc.generate(_req(checkpoint="with-sidecar.safetensors"))
    assert np.array_equal(_px(sidecar.images[0]), _px(with_vae.images[0]))
    none = svc.generate(_req(checkpoint="with-sidecar.safetensors", vae="None"))
    assert np.array_equal(_px(none.images[0]), _px(plain.images[0]))


def test_prediction_type_override_wins_over_the_sidecar(svc, tiny):
    ours = svc.generate(_req(checkpoint="sd2.safetensors")).images[0]
    cond, uncond = reference_conds(tiny["sd2"], "a cat", "")
    expected = a1111_txt2img(tiny["sd2"].unet, tiny["sd2"].vae, cond, uncond, "Euler", None, 3, 7.0, [4], 64, 64,
                             v_prediction=False)[0]
    assert np.abs(_px(ours) - _px(expected)).max() <= 3


def test_fp16_checkpoint_loads_and_generates(svc):
    result = svc.generate(_req(checkpoint="half.safetensors"))
    assert result.images[0].size == (64, 64)


def test_infotext_names_the_first_passs_vae_after_a_hires_checkpoint(svc):
    """A1111 records the VAE when the job starts: a hires checkpoint with a VAE of its own does not change
    what the infotext names (here: the built-in VAE of the first model, so no VAE key at all)."""
    result = svc.generate(_req(checkpoint="plain.safetensors", enable_hr=True, hr_upscaler="Latent",
                               hr_checkpoint="with-sidecar.safetensors", denoising_strength=0.5))
    assert "VAE" not in result.infotexts[0] and "Hires checkpoint: with-sidecar" in result.infotexts[0]
    sidecar_first = svc.generate(_req(checkpoint="with-sidecar.safetensors", enable_hr=True, hr_upscaler="Latent",
                                      hr_checkpoint="plain.safetensors", denoising_strength=0.5))
    assert "VAE: with-sidecar.vae.safetensors" in sidecar_first.infotexts[0]
