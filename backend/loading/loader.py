"""Checkpoint file or diffusers folder -> a LoadedModel whose components live on the chosen device."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from backend.errors import CheckpointError
from backend.generation.conditioning import PromptEncoder
from backend.loading import build, prediction
from backend.loading.checkpoint_file import read_state_dict
from backend.loading.detect import Family, detect, normalize_prefixes
from backend.memory.policy import Measures
from backend.samplers import scheduler_base_config

log = logging.getLogger(__name__)

PIPELINES = {
    (Family.SD1, "txt2img"): StableDiffusionPipeline,
    (Family.SD1, "img2img"): StableDiffusionImg2ImgPipeline,
    (Family.SD1, "inpaint"): StableDiffusionInpaintPipeline,
    (Family.SDXL, "txt2img"): StableDiffusionXLPipeline,
    (Family.SDXL, "img2img"): StableDiffusionXLImg2ImgPipeline,
    (Family.SDXL, "inpaint"): StableDiffusionXLInpaintPipeline,
}


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
    _pipelines: dict = field(default_factory=dict, repr=False)

    @property
    def is_inpainting(self) -> bool:
        return self.unet.config.in_channels == 9

    @property
    def scheduler_config(self) -> dict:
        return scheduler_base_config(self.prediction_type)

    @property
    def prompt_encoder(self) -> PromptEncoder:
        return PromptEncoder(self.family, self.tokenizers, self.text_encoders, self.execution_device)

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, *self.text_encoders]

    def use_vae(self, vae: torch.nn.Module) -> None:
        """Swap the VAE; pipelines built with the old one are dropped and rebuilt on demand."""
        self.vae = vae
        self._pipelines.clear()

    def pipeline(self, kind: str):
        """A diffusers pipeline of `kind` (txt2img, img2img, inpaint) sharing this model's modules."""
        if kind not in self._pipelines:
            family = Family.SD1 if self.family is Family.SD2 else self.family
            cls = PIPELINES[(family, kind)]
            self._pipelines[kind] = cls(**self._pipeline_parts(cls))
        return self._pipelines[kind]

    def _pipeline_parts(self, cls) -> dict:
        scheduler = EulerDiscreteScheduler.from_config(self.scheduler_config)
        parts = dict(vae=self.vae, unet=self.unet, scheduler=scheduler,
                     text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0])
        if self.family is Family.SDXL:
            # A1111 encodes an empty negative prompt like any other; diffusers would use zeros instead.
            parts.update(text_encoder_2=self.text_encoders[1], tokenizer_2=self.tokenizers[1],
                         force_zeros_for_empty_prompt=False, add_watermarker=False)
            if cls is not StableDiffusionXLPipeline:
                parts["requires_aesthetics_score"] = False
        else:
            parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        return parts


def load_model(path: Path, dtype: torch.dtype, prediction_override: str | None = None) -> LoadedModel:
    """The model in RAM, in `dtype`; backend.memory puts it on the device as the memory policy says."""
    if path.is_dir():
        return _load_diffusers_folder(path, dtype)
    return _load_single_file(path, dtype, prediction_override)


def _load_single_file(path: Path, dtype: torch.dtype, prediction_override: str | None) -> LoadedModel:
    sd = normalize_prefixes(read_state_dict(path))
    spec = detect(sd)
    log.info("%s: detected %s%s", path.name, spec.family.value, " inpainting" if spec.is_inpainting else "")
    unet = build.build_unet(sd, spec, dtype)
    vae = build.build_vae(sd, spec, dtype)
    encoders = [build.build_text_encoder(sd, te, dtype) for te in spec.text_encoders]
    tokenizers = [build.build_tokenizer(te) for te in spec.text_encoders]
    kind = prediction_override or _prediction_type(path, sd, spec.family, unet)
    del sd
    return LoadedModel(spec.family, unet, vae, encoders, tokenizers, kind, dtype)


def _prediction_type(path: Path, sd: dict, family: Family, unet) -> str:
    found = prediction.from_sidecar(path) or prediction.from_keys(sd.keys())
    if found:
        return found
    if family is not Family.SD2:
        return prediction.EPSILON
    config = scheduler_base_config(prediction.EPSILON)
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, 1000) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    context = torch.zeros((1, 77, unet.config.cross_attention_dim), dtype=unet.dtype)

    def predict(x, t):
        return unet(x.to(unet.dtype), t, encoder_hidden_states=context).sample

    found = prediction.probe(predict, alphas_cumprod)
    log.info("%s: no yaml sidecar or v_pred key; numeric probe says %s", path.name, found)
    return found


def _load_diffusers_folder(path: Path, dtype: torch.dtype) -> LoadedModel:
    try:
        index = json.loads((path / "model_index.json").read_text())
        pipe = DiffusionPipeline.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path.name}: not a loadable diffusers folder: {err}") from err
    family = Family.SDXL if "XL" in index.get("_class_name", "") else Family.SD1
    if family is Family.SD1 and getattr(pipe.text_encoder.config, "hidden_act", "") == "gelu":
        family = Family.SD2
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family is Family.SDXL else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family is Family.SDXL else [])
    kind = pipe.scheduler.config.get("prediction_type", prediction.EPSILON)
    return LoadedModel(family, pipe.unet, pipe.vae, encoders, tokenizers, kind, dtype)
