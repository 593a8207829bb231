"""ControlNet files: found under models/ControlNet (recursively), titled `stem [hash8]` with A1111's old model
hash, their layout and architecture detected from the tensors (lllyasviel's LDM layout, with or without
`control_model.`, or the diffusers layout; SD1, SD2 and SDXL), built as diffusers ControlNetModels offline and
kept in a small cache."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel
from diffusers.loaders import single_file_utils as ldm

from backend.errors import CheckpointError, InvalidRequest, ModelNotFound
from backend.loading.checkpoint_file import read_state_dict
from backend.registry import scan_files

log = logging.getLogger(__name__)

SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin")
CACHED_MODELS = 2  # loaded ControlNets kept (the extension's control_net_model_cache_size default)
FAMILY_BY_CONTEXT = {768: "SD1", 1024: "SD2", 2048: "SDXL"}


@dataclass(frozen=True)
class ControlNetFile:
    path: Path
    name: str  # relative to the folder, forward slashes
    short_hash: str  # A1111's old model hash: sha256 of the 64 KiB at 1 MiB, first 8 hex

    @property
    def title(self) -> str:
        return f"{Path(self.name).stem} [{self.short_hash}]"


def old_model_hash(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


class ControlNetLibrary:
    """The ControlNet folder's files and the loaded models. Used by the worker (loading) and the facade
    (lists); the file list is guarded by a lock, the cache is the worker's."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._files: list[ControlNetFile] = []
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, ControlNetModel] = OrderedDict()
        self.refresh()

    def refresh(self) -> None:
        found = [ControlNetFile(path, path.relative_to(self.folder).as_posix(), old_model_hash(path))
                 for path in scan_files(self.folder, SUFFIXES)]
        with self._lock:
            self._files = found

    def files(self) -> list[ControlNetFile]:
        with self._lock:
            return list(self._files)

    def titles(self) -> list[str]:
        return [f.title for f in self.files()]

    def find(self, wanted: str, field: str = "model") -> ControlNetFile:
        """By title, stem or file name; a title whose hash is stale still names its file (as the extension)."""
        files = self.files()
        for f in files:
            if wanted in (f.title, f.name, Path(f.name).stem):
                return f
        base = wanted.rsplit(" [", 1)[0]
        match = next((f for f in files if base in (f.name, Path(f.name).stem)), None)
        if match is None:
            raise ModelNotFound(f"{field}: no ControlNet model {wanted[:100]!r} in models/ControlNet "
                                f"(GET /controlnet/model_list lists them)")
        return match

    def load(self, entry: ControlNetFile, unet, device: torch.device, dtype: torch.dtype,
             field: str = "model") -> ControlNetModel:
        """The ControlNet for `unet` (the checkpoint's), on `device` in `dtype`; cached."""
        config = unet.config
        key = (entry.path, entry.path.stat().st_mtime_ns, dtype, str(config.attention_head_dim),
               config.cross_attention_dim, tuple(config.block_out_channels), config.addition_time_embed_dim)
        model = self._cache.pop(key, None)
        if model is None:
            model = build_controlnet(read_state_dict(entry.path), dtype, config, entry.title, field)
            log.info("loaded ControlNet %s", entry.title)
        self._cache[key] = model
        while len(self._cache) > CACHED_MODELS:
            self._cache.popitem(last=False)
        return model.to(device)


# ---------------------------------------------------------------- layouts

def to_diffusers_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any real ControlNet file's tensors -> diffusers ControlNetModel names. Other control models are refused
    by name."""
    if any(k.startswith("lora_controlnet") for k in sd):
        raise CheckpointError("this is a Control-LoRA: Control-LoRA models are not supported yet")
    if any(k.startswith(("adapter.", "body.", "conv_in.")) and "time_embedding" not in k for k in sd) and \
            not any("controlnet" in k or "zero_convs" in k for k in sd):
        raise CheckpointError("this is a T2I-Adapter: T2I-Adapter models are not supported yet")
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        return sd
    sd = {k.removeprefix("control_model."): v for k, v in sd.items()}
    if "input_hint_block.0.weight" not in sd or "zero_convs.0.0.weight" not in sd:
        raise CheckpointError("not a ControlNet: neither the LDM layout (input_hint_block, zero_convs) nor the "
                              "diffusers layout (controlnet_cond_embedding)")
    per_level = len(_indices(sd, r"input_blocks\.(\d+)\.")) - 1  # blocks after conv_in
    levels = _ldm_levels(sd)
    converted = ldm.convert_controlnet_checkpoint(sd, {"layers_per_block": (per_level - (levels - 1)) // levels})
    for name in ("0.0", "0.2"):  # SDXL's added embedding (size, crop and pooled text)
        if f"label_emb.{name}.weight" in sd:
            linear = "linear_1" if name == "0.0" else "linear_2"
            converted[f"add_embedding.{linear}.weight"] = sd[f"label_emb.{name}.weight"]
            converted[f"add_embedding.{linear}.bias"] = sd[f"label_emb.{name}.bias"]
    return {k: v for k, v in converted.items() if v is not None}


def _ldm_levels(sd: dict) -> int:
    downsamplers = [i for i in _indices(sd, r"input_blocks\.(\d+)\.") if f"input_blocks.{i}.0.op.weight" in sd]
    return len(downsamplers) + 1


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def controlnet_config(sd: dict[str, torch.Tensor]) -> dict:
    """The shapes of a ControlNetModel that match diffusers-layout tensors (the attention heads and SDXL's
    size embedding are taken from the checkpoint's UNet, which the ControlNet must match)."""
    levels = _indices(sd, r"down_blocks\.(\d+)\.")
    channels = [sd[f"down_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in levels]
    per = len(_indices(sd, r"down_blocks\.0\.resnets\.(\d+)\."))
    attention = [f"down_blocks.{i}.attentions.0.proj_in.weight" in sd for i in levels]
    depths = [len(_indices(sd, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")) for i in levels]
    mid_depth = len(_indices(sd, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    attn_key = next((k for k in sd if k.endswith("attn2.to_k.weight")), None)
    if attn_key is None:
        raise CheckpointError("this ControlNet has no cross-attention blocks")
    proj_in = next(v for k, v in sd.items() if k.endswith(".proj_in.weight"))
    blocks = _indices(sd, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    hint = [sd["controlnet_cond_embedding.conv_in.weight"].shape[0]] + [
        sd[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in blocks[1::2]]
    config = dict(
        in_channels=sd["conv_in.weight"].shape[1],
        conditioning_channels=sd["controlnet_cond_embedding.conv_in.weight"].shape[1],
        block_out_channels=channels, layers_per_block=per,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        cross_attention_dim=sd[attn_key].shape[1], use_linear_projection=proj_in.ndim == 2,
        transformer_layers_per_block=[d or mid_depth for d in depths] if any(depths) else 1,
        conditioning_embedding_out_channels=hint,
        mid_block_type="UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
    )
    if "add_embedding.linear_1.weight" in sd:
        config.update(addition_embed_type="text_time",
                      projection_class_embeddings_input_dim=sd["add_embedding.linear_1.weight"].shape[1])
    return config


def build_controlnet(sd: dict[str, torch.Tensor], dtype: torch.dtype, unet_config, title: str,
                     field: str = "model") -> ControlNetModel:
    """The file's ControlNet, checked against the checkpoint's UNet (a ControlNet for another architecture is
    a clear 4xx) and built with the UNet's attention heads and size embedding."""
    weights = to_diffusers_layout(sd)
    config = controlnet_config(weights)
    _check_matches(config, unet_config, title, field)
    config.update(attention_head_dim=unet_config.attention_head_dim, upcast_attention=unet_config.upcast_attention)
    if "addition_embed_type" in config:
        config["addition_time_embed_dim"] = unet_config.addition_time_embed_dim
    with init_empty_weights():
        model = ControlNetModel(**config)
    tensors = {}
    for name, target in model.state_dict().items():
        if name not in weights:
            raise CheckpointError(f"ControlNet {title} is incomplete: {name} is missing")
        if weights[name].shape != target.shape:
            raise CheckpointError(f"ControlNet {title}: tensor {name} has shape {tuple(weights[name].shape)}, "
                                  f"expected {tuple(target.shape)}")
        tensors[name] = weights[name].to(dtype)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _check_matches(config: dict, unet_config, title: str, field: str) -> None:
    same = (config["cross_attention_dim"] == unet_config.cross_attention_dim
            and list(config["block_out_channels"]) == list(unet_config.block_out_channels)
            and ("addition_embed_type" in config) == (unet_config.addition_embed_type is not None))
    if not same:
        raise InvalidRequest(field, f"ControlNet {title!r} is for {_family(config)}, the checkpoint is "
                                    f"{_family(dict(unet_config))}: choose a ControlNet made for this checkpoint")


def _family(config: dict) -> str:
    if config.get("addition_embed_type") is not None:
        return "SDXL"
    width = config["cross_attention_dim"]
    return FAMILY_BY_CONTEXT.get(width, f"a model with {width}-wide text conditioning")
