"""What a job made: images with their infotexts and seeds, and the job's own record of what made them (model,
VAE, sampler, networks), which the infotext is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from backend.generation.requests import GenerationRequest
from backend.registry import ModelFile
from backend.samplers import ResolvedSampler


@dataclass
class GenerationResult:
    request: GenerationRequest
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    grid: Image.Image | None = None
    grid_path: Path | None = None
    checkpoint: ModelFile | None = None
    vae: ModelFile | None = None  # the first pass's VAE file (None: the checkpoint's own), as A1111 records it
    hr_checkpoint: ModelFile | None = None  # hires fix's second-pass model, when another
    refiner: ModelFile | None = None  # the refiner, once it took over (A1111 names it only then)
    sampler: ResolvedSampler | None = None
    inpainting_conditioning: bool = False  # the model saw a masked picture (9 channels): A1111 names its weight
    interrupted: bool = False
    job_timestamp: str = ""
    warnings: list[str] = field(default_factory=list)  # shown to the user: the images are fine, something else not
    embeddings: list = field(default_factory=list)  # textual-inversion embeddings the prompts used
    networks: list = field(default_factory=list)  # LoRAs merged for this job (WantedNetwork)
    hypernetworks: list = field(default_factory=list)  # (Hypernetwork, multiplier) used for this job
    prompt_chunks: tuple[int, int] = (1, 1)  # 75-token chunks of the prompt and the negative prompt
    control_maps: list[Image.Image] = field(default_factory=list)  # ControlNet units' detected maps
    control_params: tuple[tuple[str, str], ...] = ()  # infotext: ("ControlNet 0", "Module: canny, ...")

    @property
    def gallery(self) -> list[Image.Image]:
        """What a gallery shows: the grid first for batches, then each image."""
        return ([self.grid] if self.grid is not None else []) + self.images
