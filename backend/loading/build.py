"""Turn an LDM-layout state dict into diffusers/transformers modules, offline, without random init."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as ldm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from backend.errors import CheckpointError
from backend.loading.detect import VAE_PREFIX, Family, ModelSpec, TextEncoderSpec, vae_config

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "configs" / "clip_tokenizer"
MAX_TOKENS = 77


def build_unet(sd: StateDict, spec: ModelSpec, dtype: torch.dtype) -> UNet2DConditionModel:
    weights = ldm.convert_ldm_unet_checkpoint(sd, spec.unet_config)
    with init_empty_weights():
        unet = UNet2DConditionModel(**spec.unet_config)
    return _assign(unet, weights, dtype, "UNet")


def build_vae(sd: StateDict, spec: ModelSpec, dtype: torch.dtype) -> AutoencoderKL:
    weights = ldm.convert_ldm_vae_checkpoint(sd, spec.vae_config)
    with init_empty_weights():
        vae = AutoencoderKL(**spec.vae_config)
    return _assign(vae, weights, dtype, "VAE")


def build_standalone_vae(sd: StateDict, like: AutoencoderKL, dtype: torch.dtype) -> AutoencoderKL:
    """A VAE file from models/VAE (LDM or diffusers key layout) with the same latent scaling as `like`."""
    if "decoder.conv_in.weight" in sd and "decoder.up.0.block.0.conv1.weight" in sd:
        sd = {VAE_PREFIX + k: v for k, v in sd.items()}
    if any(k.startswith(VAE_PREFIX) for k in sd):
        config = vae_config({k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}, _family_of(like))
        config["scaling_factor"] = like.config.scaling_factor
        weights = ldm.convert_ldm_vae_checkpoint(sd, config)
    else:
        config, weights = dict(like.config), sd
    with init_empty_weights():
        vae = AutoencoderKL(**{k: v for k, v in config.items() if not k.startswith("_")})
    return _assign(vae, weights, dtype, "VAE")


def _family_of(vae: AutoencoderKL) -> Family:
    return Family.SDXL if abs(vae.config.scaling_factor - 0.13025) < 1e-6 else Family.SD1


def build_text_encoder(sd: StateDict, spec: TextEncoderSpec, dtype: torch.dtype):
    config = CLIPTextConfig(**spec.config)
    cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
    with init_empty_weights():
        model = cls(config)
    if spec.layout == "clip":
        remove = spec.prefix[: -len("text_model.")]
        weights = ldm.convert_ldm_clip_checkpoint(sd, remove_prefix=remove)
    else:
        weights = ldm.convert_open_clip_checkpoint(model, sd, prefix=spec.prefix)
    return _assign(model, _match_text_prefix(weights, model), dtype, "text encoder")


def _match_text_prefix(weights: StateDict, model: torch.nn.Module) -> StateDict:
    """Converted names start with `text_model.`; some transformers versions' CLIPTextModel has no such level."""
    names = model.state_dict().keys()
    if any(n.startswith("text_model.") for n in names):
        return weights
    return {k.removeprefix("text_model."): v for k, v in weights.items()}


def build_tokenizer(spec: TextEncoderSpec) -> CLIPTokenizer:
    """The CLIP BPE tokenizer shipped in backend/configs: nothing is downloaded."""
    return CLIPTokenizer(
        str(TOKENIZER_DIR / "vocab.json"),
        str(TOKENIZER_DIR / "merges.txt"),
        pad_token=spec.pad_token,
        model_max_length=MAX_TOKENS,
    )


def _assign(module: torch.nn.Module, weights: StateDict, dtype: torch.dtype, what: str) -> torch.nn.Module:
    """Put the checkpoint's tensors into a module built on the meta device; every parameter must be covered."""
    expected = module.state_dict()
    tensors = {}
    for name, target in expected.items():
        if name not in weights:
            continue
        value = weights[name]
        if value.shape != target.shape:
            raise CheckpointError(f"{what} tensor {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
        tensors[name] = value.to(dtype) if value.is_floating_point() else value
    missing = [n for n, p in module.named_parameters() if n not in tensors]
    if missing:
        raise CheckpointError(f"{what} is incomplete: {len(missing)} tensors missing, e.g. {missing[0]}")
    module.load_state_dict(tensors, strict=False, assign=True)
    return module.eval().requires_grad_(False)
