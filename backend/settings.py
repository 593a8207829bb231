"""Every tunable of the backend in one typed object, built once by app.py from the command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Limits:
    """Bounds on one request so that no single request can take the server down."""

    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 100
    max_schedule_steps: int = 10_000  # hires fix's schedule of int(steps / denoising strength) steps
    max_upload_pixels: int = 4096 * 4096
    max_prompt_chunks: int = 75  # 75-token chunks per prompt: 5625 tokens, far above any real prompt
    max_script_jobs: int = 1000  # jobs one script may make (X/Y/Z cells x batch count, prompts from a file)

    @property
    def max_extras_pixels(self) -> int:
        """Largest picture Extras, SD upscale or hires fix may make, intermediate passes included."""
        return self.max_upload_pixels * 4

    @property
    def max_prompt_chars(self) -> int:
        """Checked before tokenizing (which is itself slow for megabytes): generous for any prompt that fits."""
        return self.max_prompt_chunks * 75 * 20


@dataclass(frozen=True)
class MemoryFlags:
    """The A1111-style command-line switches that steer the memory policy (backend/memory/policy.py)."""

    xformers: bool = False
    attention_slicing: bool = False
    medvram: bool = False
    medvram_sdxl: bool = False
    lowvram: bool = False
    compile: bool = False


@dataclass(frozen=True)
class Settings:
    models_dir: Path = PROJECT_ROOT / "models"
    outputs_dir: Path = PROJECT_ROOT / "outputs"
    ckpt_dir: Path | None = None  # defaults to models_dir / "Stable-diffusion"
    vae_dir: Path | None = None  # defaults to models_dir / "VAE"
    cache_dir: Path | None = None  # defaults to models_dir / ".cache"
    device: str = "auto"  # auto | cuda | cpu | mps
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    no_half_vae: bool = False
    upcast_sampling: bool = False  # A1111's --upcast-sampling (fp16 weights, autocast; no effect with --no-half)
    nan_check: bool = True  # A1111's --disable-nan-check turns it off: a VAE NaN is not retried in fp32
    memory: MemoryFlags = field(default_factory=MemoryFlags)
    checkpoint_cache: int = 1  # inactive checkpoints kept in RAM for fast switching back
    checkpoint_cache_gb: float | None = None  # their RAM budget; None = a third of the machine's RAM
    default_checkpoint: str | None = None
    prediction_overrides: dict[str, str] = field(default_factory=dict)  # checkpoint name -> epsilon | v_prediction
    embeddings_dirs: tuple[Path, ...] = ()  # default: models_dir/embeddings
    lora_dir: Path | None = None  # default: models_dir/Lora
    controlnet_dir: Path | None = None  # default: models_dir/ControlNet
    cluster_address: str | None = None  # a Ray cluster (HOST:PORT): jobs run on its worker actors
    cluster_workers: int = 1  # how many worker actors (each one GPU, or its share of the CPUs)
    styles_file: Path | None = None  # A1111's styles.csv; default: beside models_dir
    config_file: Path | None = None  # A1111's config.json (settings); None: settings are not kept
    hypernetwork_dir: Path | None = None  # default: models_dir/hypernetworks
    upscaler_dirs: tuple[Path, ...] = ()  # default: models_dir/ESRGAN and models_dir/RealESRGAN
    limits: Limits = field(default_factory=Limits)
    # Served to this machine only (no --listen/--share, no --hide-ui-dir-config). Only then may a caller name
    # server folders (Extras' folder batch, Open folder); the service checks it on every call.
    local_only: bool = False
    max_queued_per_user: int = 50  # --max-queued-per-user: jobs one account may have waiting (beyond: 429)
    private_outputs: bool = False  # several accounts and no --shared-outputs: each saves under outputs/<account>/
    data_dir: Path = PROJECT_ROOT  # paths in answers are shown relative to it
    freeze_all_settings: bool = False  # --freeze-settings: options cannot be changed
    frozen_settings: frozenset[str] = frozenset()  # --freeze-specific-settings

    def public_path(self, path: Path) -> str:
        """A path as callers may see it: relative to the data folder, else just its name (no absolute server
        path is ever answered)."""
        return public_path(path, self.data_dir, self.models_dir.parent)

    @property
    def checkpoint_dir(self) -> Path:
        return self.ckpt_dir or self.models_dir / "Stable-diffusion"

    @property
    def vae_folder(self) -> Path:
        return self.vae_dir or self.models_dir / "VAE"

    @property
    def upscaler_folders(self) -> tuple[Path, ...]:
        return self.upscaler_dirs or (self.models_dir / "ESRGAN", self.models_dir / "RealESRGAN")

    @property
    def vae_approx_folder(self) -> Path:
        """A1111's models/VAE-approx: the weights of the "Approx NN" and "TAESD" live previews."""
        return self.models_dir / "VAE-approx"

    @property
    def lora_folder(self) -> Path:
        return self.lora_dir or self.models_dir / "Lora"

    @property
    def controlnet_folder(self) -> Path:
        return self.controlnet_dir or self.models_dir / "ControlNet"

    @property
    def embedding_folders(self) -> list[Path]:
        return list(self.embeddings_dirs) or [self.models_dir / "embeddings"]

    @property
    def hash_cache_file(self) -> Path:
        return (self.cache_dir or self.models_dir / ".cache") / "hashes.json"


def public_path(path: Path, *roots: Path) -> str:
    """`path` relative to the first of `roots` that holds it (links are not followed), else its name alone."""
    absolute = Path(os.path.abspath(path))
    for root in roots:
        try:
            return str(absolute.relative_to(os.path.abspath(root)))
        except ValueError:
            continue
    return absolute.name
