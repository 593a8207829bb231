"""Live previews are made by the worker, every `show_progress_every_n_steps` steps, in A1111's four ways; the
service only hands out the last one made."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from backend.generation.preview import ApproxDecoder, taesd_decoder
from backend.generation.requests import GenerationRequest
from tests.conftest import build_backend


@pytest.fixture(scope="module")
def svc(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("preview-models")
    (root / "Stable-diffusion").symlink_to(models_dir / "Stable-diffusion", target_is_directory=True)
    (root / "VAE-approx").mkdir()
    torch.manual_seed(0)
    torch.save(ApproxDecoder().state_dict(), root / "VAE-approx" / "model.pt")  # A1111's Approx NN file
    torch.save(taesd_decoder().state_dict(), root / "VAE-approx" / "taesd_decoder.pth")
    service = build_backend(root, tmp_path_factory.mktemp("preview-out"))
    yield service
    service.shutdown()


def _run(svc, steps=7, **options):
    svc.set_options({"live_previews_enable": True, "show_progress_every_n_steps": 2,
                     "show_progress_type": "Approx cheap", **options})
    job = svc.submit(GenerationRequest(prompt="a boat", steps=steps, width=64, height=64, seed=3,
                                       sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False))
    result = job.wait(120)
    return job, result


def test_a_preview_every_n_steps(svc):
    job, _ = _run(svc, steps=7)
    assert job.progress.preview_step == 6 and svc.preview(job).size == (32, 32)  # cheap: latent size x4
    job, _ = _run(svc, steps=7, show_progress_every_n_steps=3)
    assert job.progress.preview_step == 6
    job, _ = _run(svc, steps=7, live_previews_enable=False)
    assert svc.preview(job) is None and job.progress.preview_step == -1


def test_full_preview_of_the_last_step_is_the_image(svc):
    """Euler's last denoised estimate is the final latent: the Full preview (the VAE through the guarded
    path) of the last step is the result picture."""
    job, result = _run(svc, steps=4, show_progress_every_n_steps=4, show_progress_type="Full")
    assert job.progress.preview_step == 4
    assert np.array_equal(np.asarray(svc.preview(job)), np.asarray(result.images[0]))


def test_approx_nn_and_taesd_use_their_weights(svc):
    job, _ = _run(svc, steps=2, show_progress_type="Approx NN")
    assert svc.preview(job).size == (16, 16)  # A1111's VAEApprox: a quarter of the picture
    job, _ = _run(svc, steps=2, show_progress_type="TAESD")
    assert svc.preview(job).size == (64, 64)  # the picture's size


def test_missing_weights_fall_back_to_the_cheap_preview_with_a_log(models_dir, tmp_path, caplog):
    service = build_backend(models_dir, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="backend.generation.preview"):
            job, _ = _run(service, steps=4, show_progress_type="TAESD")
            _run(service, steps=4, show_progress_type="TAESD")
        assert service.preview(job).size == (32, 32)
        assert sum("taesd_decoder.pth" in r.getMessage() for r in caplog.records) == 1
    finally:
        service.shutdown()
