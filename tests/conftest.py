"""Shared fixtures: tiny real-layout checkpoints on disk and a backend built on them, as app.py builds it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # any attempt to reach a model hub fails loudly
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# pytest-xdist's workers share the cores; the servers tests start inherit the same torch thread count, so a
# server's pixels and the in-process reference's are summed in the same order
TORCH_THREADS = max(1, min(4, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))

import pytest  # noqa: E402
import torch  # noqa: E402

from app import build_service  # noqa: E402
from backend.service import GenerationService  # noqa: E402
from backend.settings import Settings  # noqa: E402
from tests.fixtures import tiny_controlnets, tiny_models, tiny_upscalers  # noqa: E402

logging.getLogger("diffusers").setLevel(logging.ERROR)
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

CHECKPOINTS = {
    "sd1.safetensors": "sd1",
    "sd2-v.safetensors": "sd2",
    "sdxl.safetensors": "sdxl",
    "sd1-inpainting.safetensors": "sd1_inpaint",
    "sd1-pickle.ckpt": "sd1",
    "sdxl-refiner.safetensors": "sdxl_refiner",
}


@pytest.fixture(scope="session")
def tiny():
    """The tiny models in diffusers form, keyed by kind: the source of every checkpoint file below."""
    return {
        "sd1": tiny_models.make_sd1(seed=1),
        "sd2": tiny_models.make_sd2(seed=2, v_prediction=True),
        "sdxl": tiny_models.make_sdxl(seed=3),
        "sd1_inpaint": tiny_models.make_sd1(seed=4, in_channels=9),
        "sdxl_refiner": tiny_models.make_sdxl_refiner(seed=5),
    }


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, tiny) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name, kind in CHECKPOINTS.items():
        tiny_models.write_checkpoint(tiny[kind], root / "Stable-diffusion" / name)
    tiny_models.write_diffusers_folder(tiny["sd1"], root / "Stable-diffusion" / "diffusers-sd1")
    (root / "VAE").mkdir()
    tiny_upscalers.write_esrgan(root / "ESRGAN" / "4x_tiny.pth")
    write_controlnets(tiny, root / "ControlNet")
    return root


# ControlNets for the tiny checkpoints, in each layout real files have (name -> (family, layout))
CONTROLNETS = {"control_sd15_tiny.pth": ("sd1", "ldm-pth"), "control_v11p_sd15_tiny.safetensors": ("sd1", "ldm"),
               "diffusers_sd15_tiny.safetensors": ("sd1", "diffusers"), "sub/control_sd21_tiny.pth": ("sd2", "ldm-pth"),
               "diffusers_xl_tiny.safetensors": ("sdxl", "diffusers"), "control_xl_tiny.pth": ("sdxl", "ldm-pth")}


def controlnet_for(tiny, family: str, seed: int = 11):
    """The tiny ControlNet every file of `family` holds (same weights in each layout)."""
    return tiny_controlnets.make_controlnet(tiny[family], seed)


def write_controlnets(tiny, folder: Path) -> None:
    for name, (family, layout) in CONTROLNETS.items():
        net, path = controlnet_for(tiny, family), folder / name
        if layout == "ldm-pth":
            tiny_controlnets.write_ldm_pth(net, tiny[family].unet.config, path)
        elif layout == "ldm":
            tiny_controlnets.write_ldm_safetensors(net, tiny[family].unet.config, path)
        else:
            tiny_controlnets.write_diffusers(net, path)


def build_backend(models_dir: Path, outputs_dir: Path, **settings) -> GenerationService:
    """The backend exactly as app.py wires it, on the CPU in fp32 unless `settings` say otherwise."""
    settings = {"device": "cpu", "precision": "fp32", **settings}
    return build_service(Settings(models_dir=models_dir, outputs_dir=outputs_dir, **settings))


@pytest.fixture(scope="session")
def service(models_dir, tmp_path_factory) -> GenerationService:
    svc = build_backend(models_dir, tmp_path_factory.mktemp("outputs"))
    yield svc
    svc.shutdown()
