"""Work out what a single-file checkpoint is (family, sizes, text encoders) from its tensors alone.

Only the few facts that shapes cannot tell are assumed here (see ../shared/checkpoint-facts.md):
attention head counts, GroupNorm groups, and the text encoders' activation functions."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

import torch

from backend.errors import CheckpointError

StateDict = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."  # the refiner has OpenCLIP bigG only


class Family(str, Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"


# Default generation size of each family (its training resolution).
NATIVE_SIZE = {Family.SD1: 512, Family.SD2: 512, Family.SDXL: 1024}
VAE_SCALING = {Family.SD1: 0.18215, Family.SD2: 0.18215, Family.SDXL: 0.13025}


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder: where its tensors are, its layout, and its transformers CLIPTextConfig values."""

    prefix: str
    layout: str  # "clip" (OpenAI/transformers names) or "openclip"
    config: dict
    with_projection: bool
    pad_token: str


@dataclass(frozen=True)
class ModelSpec:
    family: Family
    unet_config: dict
    vae_config: dict
    text_encoders: list[TextEncoderSpec] = field(default_factory=list)

    @property
    def is_inpainting(self) -> bool:
        return self.unet_config["in_channels"] == 9


def normalized_names(names: Iterable[str]) -> dict[str, str]:
    """Normalized name -> name in the file. Some fine-tunes save the UNet one level too shallow
    (`diffusion_model.` instead of `model.diffusion_model.`)."""
    names = list(names)
    shallow = not any(n.startswith(UNET_PREFIX) for n in names) and any(n.startswith("diffusion_model.") for n in names)
    return {("model." + n if shallow and n.startswith("diffusion_model.") else n): n for n in names}


def detect(sd: StateDict) -> ModelSpec:
    """Family and every size of the model in `sd` (a normalized LDM-layout state dict)."""
    unet = _strip(sd, UNET_PREFIX)
    if "input_blocks.0.0.weight" not in unet:
        raise CheckpointError("this file has no Stable Diffusion UNet (no 'model.diffusion_model.input_blocks' tensors)")
    family, encoders = _detect_text_encoders(sd)
    vae = _strip(sd, VAE_PREFIX)
    if "decoder.conv_in.weight" not in vae:
        raise CheckpointError("this file has no VAE ('first_stage_model.' tensors); load a full checkpoint")
    pooled_dim = encoders[-1].config.get("projection_dim", 0) if family is Family.SDXL else 0
    # SDXL's added numbers: size, crop and target size (6); the refiner's: size, crop and aesthetic score (5)
    added_numbers = 5 if family is Family.SDXL and len(encoders) == 1 else 6
    return ModelSpec(
        family=family,
        unet_config=unet_config(unet, family, pooled_dim, added_numbers),
        vae_config=vae_config(vae, family),
        text_encoders=encoders,
    )


def _strip(sd: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _indices(keys, pattern: str) -> list[int]:
    """Distinct integers captured by `pattern` (a regex with one group) across `keys`."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


# ---------------------------------------------------------------- text encoders

def _detect_text_encoders(sd: StateDict) -> tuple[Family, list[TextEncoderSpec]]:
    keys = sd.keys()
    if any(k.startswith(SDXL_OPENCLIP_PREFIX) for k in keys):
        clip = _clip_spec(sd, SDXL_CLIP_PREFIX, with_projection=False, pad_token="<|endoftext|>")
        big_g = _openclip_spec(sd, SDXL_OPENCLIP_PREFIX, drop_last_layer=False, with_projection=True)
        return Family.SDXL, [clip, big_g]
    if any(k.startswith(SDXL_REFINER_OPENCLIP_PREFIX) for k in keys):
        return Family.SDXL, [_openclip_spec(sd, SDXL_REFINER_OPENCLIP_PREFIX, drop_last_layer=False,
                                            with_projection=True)]
    if any(k.startswith(SD2_OPENCLIP_PREFIX) for k in keys):
        # SD 2.x conditions on the penultimate layer: the last one is not part of the diffusers encoder.
        return Family.SD2, [_openclip_spec(sd, SD2_OPENCLIP_PREFIX, drop_last_layer=True, with_projection=False)]
    if any(k.startswith(SD1_CLIP_PREFIX) for k in keys):
        return Family.SD1, [_clip_spec(sd, SD1_CLIP_PREFIX, with_projection=False, pad_token="<|endoftext|>")]
    raise CheckpointError("no text encoder found: this is not an SD 1.x, SD 2.x or SDXL checkpoint")


def _heads_for_text(width: int) -> int:
    return max(1, width // 64)


def _clip_spec(sd: StateDict, prefix: str, with_projection: bool, pad_token: str) -> TextEncoderSpec:
    tok = sd[prefix + "embeddings.token_embedding.weight"]
    layers = _indices(sd, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    width = tok.shape[1]
    config = dict(
        vocab_size=tok.shape[0],
        hidden_size=width,
        intermediate_size=sd[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=len(layers),
        num_attention_heads=_heads_for_text(width),
        max_position_embeddings=sd[prefix + "embeddings.position_embedding.weight"].shape[0],
        hidden_act="quick_gelu",
        projection_dim=width,
    )
    return TextEncoderSpec(prefix, "clip", config, with_projection, pad_token)


def _openclip_spec(sd: StateDict, prefix: str, drop_last_layer: bool, with_projection: bool) -> TextEncoderSpec:
    tok = sd[prefix + "token_embedding.weight"]
    layers = _indices(sd, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    width = tok.shape[1]
    projection = sd.get(prefix + "text_projection")
    config = dict(
        vocab_size=tok.shape[0],
        hidden_size=width,
        intermediate_size=sd[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=len(layers) - (1 if drop_last_layer else 0),
        num_attention_heads=_heads_for_text(width),
        max_position_embeddings=sd[prefix + "positional_embedding"].shape[0],
        hidden_act="gelu",
        projection_dim=projection.shape[1] if projection is not None else width,
    )
    return TextEncoderSpec(prefix, "openclip", config, with_projection, pad_token="!")


# ---------------------------------------------------------------- UNet

@dataclass
class _Level:
    channels: int
    depths: list[int]  # transformer depth of each resnet's attention (0 = none)


def _unet_levels(unet: StateDict) -> list[_Level]:
    """Walk `input_blocks` in order; a downsampler (`.0.op`) closes a resolution level."""
    levels = [_Level(0, [])]
    for i in _indices(unet, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in unet:
            levels.append(_Level(0, []))
            continue
        level = levels[-1]
        level.channels = unet[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]
        depth = len(_indices(unet, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
        level.depths.append(depth)
    return levels


def unet_config(unet: StateDict, family: Family, pooled_dim: int = 0, added_numbers: int = 6) -> dict:
    """A diffusers UNet2DConditionModel config that matches the tensors."""
    levels = _unet_levels(unet)
    layers_per_block = len(levels[0].depths)
    if any(len(level.depths) != layers_per_block for level in levels):
        raise CheckpointError("UNet levels have different numbers of blocks; this layout is not supported")
    has_attention = [max(level.depths) > 0 for level in levels]
    level_depths = [max(level.depths) for level in levels]
    mid_depth = len(_indices(unet, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    channels = [level.channels for level in levels]

    attn_keys = [k for k in unet if k.endswith("transformer_blocks.0.attn2.to_k.weight")]
    if not attn_keys:
        raise CheckpointError("UNet has no cross-attention blocks")
    proj_in = next(v for k, v in unet.items() if k.endswith(".proj_in.weight"))

    config = dict(
        sample_size=NATIVE_SIZE[family] // 8,
        in_channels=unet["input_blocks.0.0.weight"].shape[1],
        out_channels=unet["out.2.weight"].shape[0],
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        cross_attention_dim=unet[attn_keys[0]].shape[1],
        transformer_layers_per_block=_transformer_depths(level_depths, mid_depth),
        attention_head_dim=_unet_heads(family, channels),
        use_linear_projection=proj_in.ndim == 2,
        upcast_attention=family is Family.SD2,
    )
    if "label_emb.0.0.weight" in unet:
        adm_in = unet["label_emb.0.0.weight"].shape[1]
        config.update(
            addition_embed_type="text_time",
            projection_class_embeddings_input_dim=adm_in,
            # SDXL's added embedding is the pooled text embedding plus Fourier-embedded size/crop/score numbers.
            addition_time_embed_dim=(adm_in - pooled_dim) // added_numbers,
        )
    return config


def _transformer_depths(level_depths: list[int], mid_depth: int) -> int | list[int]:
    """diffusers reads the middle block's depth from the last level, so levels without attention take it."""
    if all(d in (0, mid_depth) for d in level_depths):
        return mid_depth
    depths = [d or mid_depth for d in level_depths]
    if depths[-1] != mid_depth:
        raise CheckpointError("the middle block's transformer depth differs from the last level's")
    return depths


def _unet_heads(family: Family, channels: list[int]) -> int | list[int]:
    # In diffusers' UNet config "attention_head_dim" is, for historical reasons, the number of heads.
    if family is Family.SD1:
        return 8
    return [max(1, c // 64) for c in channels]


# ---------------------------------------------------------------- VAE

def vae_config(vae: StateDict, family: Family) -> dict:
    """A diffusers AutoencoderKL config that matches the tensors (keys without `first_stage_model.`)."""
    levels = _indices(vae, r"encoder\.down\.(\d+)\.")
    channels = [vae[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in levels]
    blocks = _indices(vae, r"encoder\.down\.0\.block\.(\d+)\.")
    return dict(
        in_channels=vae["encoder.conv_in.weight"].shape[1],
        out_channels=vae["decoder.conv_out.weight"].shape[0],
        latent_channels=vae["decoder.conv_in.weight"].shape[1],
        block_out_channels=channels,
        layers_per_block=len(blocks),
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        sample_size=NATIVE_SIZE[family],
        scaling_factor=VAE_SCALING[family],
    )
