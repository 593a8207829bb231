"""Checkpoint file or diffusers folder -> a LoadedModel whose components live on the chosen device."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers import DiffusionPipeline

from backend.errors import CheckpointError
from backend.loading import build, prediction
from backend.loading.checkpoint_file import open_checkpoint
from backend.loading.detect import UNET_PREFIX, VAE_PREFIX, Family, detect, normalized_names
from backend.memory.policy import Measures, ModelSize

if TYPE_CHECKING:  # generation's own objects, attached to a model it runs
    from backend.networks.hypernetworks import HypernetPatcher
    from backend.networks.patch import NetworkPatcher
    from backend.prompts.encode import ConditioningCache

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    family: Family
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list
    tokenizers: list
    prediction_type: str
    dtype: torch.dtype
    execution_device: torch.device = torch.device("cpu")  # where it computes, wherever the weights are
    applied_measures: Measures | None = None  # set by backend.memory.apply
    alphas_cumprod: torch.Tensor | None = None  # the checkpoint's own noise schedule (SD 1.x/2.x), None: SD's
    # What generation keeps with the model while it is loaded, each created by its owner on first use:
    conditioning_cache: ConditioningCache | None = field(default=None, repr=False)  # prompts/encode.py
    network_patcher: NetworkPatcher | None = field(default=None, repr=False)  # LoRAs merged into the weights
    hypernet_patcher: HypernetPatcher | None = field(default=None, repr=False)  # hypernetworks on attention

    @property
    def is_inpainting(self) -> bool:
        return self.unet.config.in_channels == 9

    @property
    def is_sdxl_refiner(self) -> bool:
        """SDXL's refiner: OpenCLIP bigG alone, conditioned on an aesthetic score instead of a target size."""
        return self.family is Family.SDXL and len(self.text_encoders) == 1

    @property
    def scheduler_config(self) -> dict:
        return prediction.scheduler_base_config(self.prediction_type)

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, *self.text_encoders]

    def use_vae(self, vae: torch.nn.Module) -> None:
        self.vae = vae


CPU = torch.device("cpu")


def open_model(path: Path) -> SingleFileModel | DiffusersFolderModel:
    """A model on disk, identified but not yet built: its size tells the memory policy where it should go."""
    return DiffusersFolderModel(path) if path.is_dir() else SingleFileModel(path)


def load_model(path: Path, dtype: torch.dtype, vae_dtype: torch.dtype | None = None, device: torch.device = CPU,
               prediction_override: str | None = None) -> LoadedModel:
    return open_model(path).load(dtype, vae_dtype or dtype, device, prediction_override)


class SingleFileModel:
    """A single-file LDM checkpoint. Only its index is read until `load`, which builds each module from the
    file's tensors read one at a time, cast to the target dtype and put on the target device as they come."""

    def __init__(self, path: Path):
        self.path = path
        file_tensors = open_checkpoint(path)
        self.tensors = file_tensors.renamed(normalized_names(file_tensors))
        self.spec = detect(self.tensors.meta())
        log.info("%s: detected %s%s", path.name, self.spec.family.value, " inpainting" if self.spec.is_inpainting else "")

    def size(self, dtype: torch.dtype, vae_dtype: torch.dtype) -> ModelSize:
        parts = [self.tensors.nbytes(UNET_PREFIX, dtype), self.tensors.nbytes(VAE_PREFIX, vae_dtype),
                 *(self.tensors.nbytes(te.prefix, dtype) for te in self.spec.text_encoders)]
        return ModelSize(sum(parts), max(parts), is_sdxl=self.spec.family is Family.SDXL, dtype=dtype)

    def load(self, dtype: torch.dtype, vae_dtype: torch.dtype, device: torch.device,
             prediction_override: str | None = None) -> LoadedModel:
        spec, weights = self.spec, self.tensors.cast(dtype, device)
        unet = build.build_unet(weights, spec, dtype)
        vae = build.build_vae(self.tensors.cast(vae_dtype, device), spec, vae_dtype)
        encoders = [build.build_text_encoder(weights, te, dtype) for te in spec.text_encoders]
        tokenizers = [build.build_tokenizer(te) for te in spec.text_encoders]
        kind = prediction_override or _prediction_type(self.path, self.tensors, spec.family, unet)
        return LoadedModel(spec.family, unet, vae, encoders, tokenizers, kind, dtype, execution_device=device,
                           alphas_cumprod=_own_schedule(self.tensors, spec.family))


def _own_schedule(tensors, family: Family) -> torch.Tensor | None:
    """The `alphas_cumprod` an SD 1.x/2.x checkpoint carries: A1111's LDM model loads it with the weights (into
    a float32 buffer), so fine-tunes with their own schedule sample on it. SDXL uses its fixed discretization,
    whatever the file holds. A tensor that is not a schedule (1000 values, decreasing, in (0, 1]) is ignored."""
    if family is Family.SDXL or "alphas_cumprod" not in tensors.keys():
        return None
    values = tensors["alphas_cumprod"].float().cpu()
    if values.shape != (1000,) or not torch.isfinite(values).all() or not (0 < values).all() \
            or not (values <= 1).all() or not (values[1:] <= values[:-1]).all():
        log.warning("ignoring this checkpoint's alphas_cumprod: not a 1000-step noise schedule")
        return None
    return values


def _prediction_type(path: Path, tensors, family: Family, unet) -> str:
    found = prediction.from_sidecar(path) or prediction.from_keys(tensors.keys())
    if found:
        return found
    if family is not Family.SD2:
        return prediction.EPSILON
    config = prediction.scheduler_base_config(prediction.EPSILON)
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    context = torch.zeros((1, 77, unet.config.cross_attention_dim), dtype=unet.dtype, device=unet.device)

    def predict(x, t):
        return unet(x.to(unet.device, unet.dtype), t, encoder_hidden_states=context).sample.cpu()

    found = prediction.probe(predict, alphas_cumprod)
    log.info("%s: no yaml sidecar or v_pred key; numeric probe says %s", path.name, found)
    return found


class DiffusersFolderModel:
    """A diffusers folder. diffusers itself loads it (it also builds on the meta device, without random init),
    into RAM in the target dtype; `load` then moves it to the device."""

    def __init__(self, path: Path):
        self.path = path
        try:
            index = json.loads((path / "model_index.json").read_text())
            xl = "XL" in str(index.get("_class_name", ""))
            # SDXL's refiner has no first text encoder: OpenCLIP bigG (text_encoder_2) alone
            self.refiner = xl and not (path / "text_encoder" / "config.json").is_file()
            encoder_dir = "text_encoder_2" if self.refiner else "text_encoder"
            encoder_config = json.loads((path / encoder_dir / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path.name}: not a loadable diffusers folder "
                                  f"({type(err).__name__}: model_index.json or text_encoder/config.json)") from err
        family = Family.SDXL if xl else Family.SD1
        if family is Family.SD1 and encoder_config.get("hidden_act") == "gelu":
            family = Family.SD2
        self.family = family
        self._pipe = None

    def size(self, dtype: torch.dtype, vae_dtype: torch.dtype) -> ModelSize:
        pipe = self._pipeline(dtype)
        parts = [module_bytes(pipe.unet, dtype), module_bytes(pipe.vae, vae_dtype),
                 *(module_bytes(e, dtype) for e in self._encoders(pipe))]
        return ModelSize(sum(parts), max(parts), is_sdxl=self.family is Family.SDXL, dtype=dtype)

    def load(self, dtype: torch.dtype, vae_dtype: torch.dtype, device: torch.device,
             prediction_override: str | None = None) -> LoadedModel:
        pipe = self._pipeline(dtype)
        encoders = self._encoders(pipe)
        for module in (pipe.unet, *encoders):
            module.to(device, dtype)
        pipe.vae.to(device, vae_dtype)
        tokenizers = [pipe.tokenizer_2] if self.refiner else \
            [pipe.tokenizer] + ([pipe.tokenizer_2] if self.family is Family.SDXL else [])
        kind = prediction_override or pipe.scheduler.config.get("prediction_type", prediction.EPSILON)
        return LoadedModel(self.family, pipe.unet, pipe.vae, encoders, tokenizers, kind, dtype,
                           execution_device=device)

    def _pipeline(self, dtype: torch.dtype):
        if self._pipe is None:
            try:
                self._pipe = DiffusionPipeline.from_pretrained(str(self.path), torch_dtype=dtype, local_files_only=True)
            except (OSError, ValueError) as err:
                log.warning("loading the diffusers folder %s failed: %s", self.path.name, err)
                raise CheckpointError(f"{self.path.name}: not a loadable diffusers folder ({type(err).__name__}; "
                                      "the server log has the details)") from err
        return self._pipe

    def _encoders(self, pipe) -> list:
        if self.refiner:
            return [pipe.text_encoder_2]
        return [pipe.text_encoder] + ([pipe.text_encoder_2] if self.family is Family.SDXL else [])


def module_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of `module`'s weights, or what they would take with floating-point tensors in `dtype`."""
    return sum(t.numel() * (dtype if dtype and t.is_floating_point() else t.dtype).itemsize
               for t in [*module.parameters(), *module.buffers()])
