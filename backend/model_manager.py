"""Keeps the loaded model (and its chosen VAE) and loads another on request. Used only by the worker thread."""

from __future__ import annotations

import gc
import logging

import torch

from backend.errors import ModelNotFound
from backend.loading.build import build_standalone_vae
from backend.loading.checkpoint_file import read_state_dict
from backend.loading.loader import LoadedModel, load_model
from backend.registry import ModelFile, ModelRegistry

log = logging.getLogger(__name__)

NO_CHECKPOINT_MESSAGE = ("No checkpoint found. Put a Stable Diffusion checkpoint (.safetensors, .ckpt or a diffusers "
                         "folder) into {folder} and press the refresh button.")

AUTOMATIC_VAE = "Automatic"
NO_VAE = "None"


class ModelManager:
    def __init__(self, registry: ModelRegistry, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype,
                 prediction_overrides: dict[str, str] | None = None):
        self.registry = registry
        self.device = device
        self.dtype = dtype
        self.vae_dtype = vae_dtype
        self.current_file: ModelFile | None = None
        self.current_vae: ModelFile | None = None  # None = the checkpoint's own VAE
        self._model: LoadedModel | None = None
        self._builtin_vae = None
        self.prediction_overrides = dict(prediction_overrides or {})  # checkpoint name -> epsilon | v_prediction

    @property
    def loaded_family(self):
        return self._model.family if self._model is not None else None

    def default_checkpoint(self, preferred: str | None = None) -> ModelFile:
        if preferred:
            return self.registry.find_checkpoint(preferred)
        if self.current_file is not None:
            return self.current_file
        checkpoints = self.registry.checkpoints
        if not checkpoints:
            raise ModelNotFound(NO_CHECKPOINT_MESSAGE.format(folder=self.registry.checkpoint_dir))
        return checkpoints[0]

    def get(self, checkpoint: ModelFile, vae_choice: str | None = None) -> LoadedModel:
        if self._model is None or checkpoint != self.current_file:
            self._load(checkpoint)
        self._apply_vae(checkpoint, vae_choice)
        return self._model

    def _load(self, checkpoint: ModelFile) -> None:
        self.unload()
        log.info("loading %s on %s as %s", checkpoint.title, self.device, self.dtype)
        override = self.prediction_overrides.get(checkpoint.name) or self.prediction_overrides.get(checkpoint.model_name)
        self._model = load_model(checkpoint.path, self.device, self.dtype, override)
        self._model.vae.to(self.vae_dtype)
        self._builtin_vae = self._model.vae
        self.current_file, self.current_vae = checkpoint, None

    def unload(self) -> None:
        self._model = self._builtin_vae = None
        self.current_file = self.current_vae = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _apply_vae(self, checkpoint: ModelFile, vae_choice: str | None) -> None:
        wanted = self._wanted_vae(checkpoint, vae_choice)
        current_path = self.current_vae.path if self.current_vae else None
        if wanted == current_path:
            return
        if wanted is None:
            self._model.use_vae(self._builtin_vae)
            self.current_vae = None
        else:
            sd = read_state_dict(wanted)
            self._model.use_vae(build_standalone_vae(sd, self._builtin_vae, self.vae_dtype).to(self.device))
            self.current_vae = ModelFile(wanted, wanted.name, self.registry.hashes.sha256(wanted))

    def _wanted_vae(self, checkpoint: ModelFile, vae_choice: str | None):
        if vae_choice == NO_VAE:
            return None
        if vae_choice and vae_choice != AUTOMATIC_VAE:
            return self.registry.find_vae(vae_choice).path
        return self.registry.sidecar_vae(checkpoint)
