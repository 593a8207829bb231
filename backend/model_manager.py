"""Keeps the active model (and its chosen VAE) on the device, recent ones in a RAM cache, and loads others on
request. Loading and switching happen on the worker thread; other threads read what is loaded, so every
access to the cache goes through one lock."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

from backend.errors import ModelNotFound
from backend.loading.build import build_standalone_vae
from backend.loading.checkpoint_file import read_state_dict
from backend.loading.detect import Family
from backend.loading.loader import LoadedModel, module_bytes, open_model
from backend.memory.apply import apply_measures, park, release_memory, replace_vae
from backend.memory.facts import DeviceFacts
from backend.memory.policy import GB, Measures, MemoryPlan, models_to_evict, plan_memory
from backend.registry import ModelFile, ModelRegistry
from backend.settings import MemoryFlags

log = logging.getLogger(__name__)

NO_CHECKPOINT_MESSAGE = ("No checkpoint found. Put a Stable Diffusion checkpoint (.safetensors, .ckpt or a diffusers "
                         "folder) into {folder} and press the refresh button.")

AUTOMATIC_VAE = "Automatic"
NO_VAE = "None"


@dataclass(frozen=True)
class Placement:
    """Where and how models run: device, precisions, the memory flags and how to probe the machine's facts."""

    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    flags: MemoryFlags = MemoryFlags()
    probe: Callable[[], DeviceFacts] | None = None  # free memory changes, so it is probed again at every load


@dataclass(frozen=True)
class CacheLimits:
    """Inactive models kept in RAM so that switching back is fast (A1111's "checkpoints to cache in RAM")."""

    max_models: int = 1
    max_bytes: int = 8 * GB


@dataclass
class CachedModel:
    file: ModelFile
    model: LoadedModel
    builtin_vae: torch.nn.Module
    plan: MemoryPlan
    vae_file: ModelFile | None = None  # None = the checkpoint's own VAE

    @property
    def bytes(self) -> int:
        return sum(module_bytes(m) for m in self.model.modules())


class ModelManager:
    def __init__(self, registry: ModelRegistry, placement: Placement, cache: CacheLimits = CacheLimits(),
                 prediction_overrides: dict[str, str] | None = None):
        self.registry = registry
        self.placement = placement
        self.cache = cache
        self.prediction_overrides = dict(prediction_overrides or {})  # checkpoint name -> epsilon | v_prediction
        self._entries: OrderedDict[str, CachedModel] = OrderedDict()  # least recently used first; last = active
        self._lock = threading.RLock()

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def _active(self) -> CachedModel | None:
        with self._lock:
            return next(reversed(self._entries.values())) if self._entries else None

    @property
    def current_file(self) -> ModelFile | None:
        active = self._active
        return active.file if active else None

    @property
    def current_vae(self) -> ModelFile | None:
        active = self._active
        return active.vae_file if active else None

    @property
    def loaded_family(self) -> Family | None:
        active = self._active
        return active.model.family if active else None

    @property
    def loaded_model(self) -> LoadedModel | None:
        active = self._active
        return active.model if active else None

    @property
    def plan(self) -> MemoryPlan:
        return self._active.plan

    @property
    def cached_files(self) -> list[ModelFile]:
        """Every model held in RAM, least recently used first; the last one is active."""
        with self._lock:
            return [entry.file for entry in self._entries.values()]

    def default_checkpoint(self, preferred: str | None = None) -> ModelFile:
        if preferred:
            return self.registry.find_checkpoint(preferred)
        if self.current_file is not None:
            return self.current_file
        checkpoints = self.registry.checkpoints
        if not checkpoints:
            raise ModelNotFound(NO_CHECKPOINT_MESSAGE.format(folder=self.registry.checkpoint_dir.name))
        return checkpoints[0]

    def get(self, checkpoint: ModelFile, vae_choice: str | None = None) -> LoadedModel:
        with self._lock:
            active = self._active
            # The same file, compared by path: its registry entry is replaced when its hash arrives, and that
            # must not take the model off the device and back.
            if active is None or active.file.path != checkpoint.path:
                self._activate(checkpoint)
            else:
                active.file = checkpoint
            self._apply_vae(self._active, vae_choice)
            return self._active.model

    def apply(self, measures: Measures) -> None:
        """Put the active model into the state the (per-request) measures describe."""
        with self._lock:
            apply_measures(self._active.model, measures, self.device)

    def use_fp32_vae(self) -> None:
        """After a VAE overflowed in half precision: every VAE, cached or loaded later, runs in fp32."""
        with self._lock:
            self.placement = dataclasses.replace(self.placement, vae_dtype=torch.float32)
            for entry in self._entries.values():
                entry.builtin_vae.to(torch.float32)
                entry.model.vae.to(torch.float32)

    def unload(self) -> None:
        with self._lock:
            self._entries.clear()
        release_memory()

    # ---------------------------------------------------------------- switching and the RAM cache

    def _activate(self, checkpoint: ModelFile) -> None:
        if self._active is not None and self.device.type != "cpu":
            park(self._active.model)  # frees the device for the next model; it stays in RAM
        key = str(checkpoint.path)
        if key in self._entries:
            self._entries.move_to_end(key)
            log.info("switching to %s from the RAM cache", checkpoint.title)
        else:
            self._evict(list(self._entries.values()))  # before loading, so old and new never add up in RAM
            self._entries[key] = self._load(checkpoint)
        self.apply(self._active.plan.measures)
        self._evict(list(self._entries.values())[:-1])

    def _evict(self, inactive: list[CachedModel]) -> None:
        """Drop the least recently used of `inactive` beyond the cache limits, and really free their memory."""
        count = models_to_evict([e.bytes for e in inactive], self.cache.max_models, self.cache.max_bytes)
        keys = [str(e.file.path) for e in inactive[:count]]
        inactive.clear()  # hold no reference to an evicted model, or it could not be freed
        for key in keys:
            log.info("evicting %s from the RAM cache", self._entries.pop(key).file.title)
        if keys:
            release_memory()

    def _load(self, checkpoint: ModelFile) -> CachedModel:
        p = self.placement
        override = self.prediction_overrides.get(checkpoint.name) or self.prediction_overrides.get(checkpoint.model_name)
        source = open_model(checkpoint.path)
        plan = plan_memory(self._facts(), p.device, source.size(p.dtype, p.vae_dtype), p.flags)
        log.info("memory plan for %s: %s", checkpoint.title, plan.describe())
        weights_device = plan.weights_device(p.device)
        log.info("loading %s onto %s as %s", checkpoint.title, weights_device, p.dtype)
        model = source.load(p.dtype, p.vae_dtype, weights_device, override)
        return CachedModel(checkpoint, model, model.vae, plan)

    def _facts(self) -> DeviceFacts:
        return self.placement.probe() if self.placement.probe else DeviceFacts()

    # ---------------------------------------------------------------- VAE choice

    def _apply_vae(self, entry: CachedModel, vae_choice: str | None) -> None:
        wanted = self._wanted_vae(entry.file, vae_choice)
        current_path = entry.vae_file.path if entry.vae_file else None
        if wanted == current_path:
            return
        if wanted is None:
            vae, entry.vae_file = entry.builtin_vae, None
        else:
            sd = read_state_dict(wanted)
            vae = build_standalone_vae(sd, entry.builtin_vae, self.placement.vae_dtype)
            entry.vae_file = ModelFile(wanted, wanted.name, self.registry.hashes.sha256(wanted))
        replace_vae(entry.model, vae, self.device)

    def _wanted_vae(self, checkpoint: ModelFile, vae_choice: str | None):
        if vae_choice == NO_VAE:
            return None
        if vae_choice and vae_choice != AUTOMATIC_VAE:
            return self.registry.find_vae(vae_choice).path
        return self.registry.sidecar_vae(checkpoint)
