"""Which of our modules a LoRA-family key means. Files name layers three ways: kohya's diffusers-style names
(`lora_unet_down_blocks_0_attentions_0_proj_in`, SD 1.x/2.x), kohya's original-layout names for SDXL
(`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), and diffusers/peft module paths
(`unet.down_blocks.0.attentions.0.proj_in`). Every patchable module of the loaded model gets all its names.

Our SDXL second text encoder has separate q/k/v projections, so `lora_te2_..._q_proj` lands on its own layer
(A1111 splits the same delta into thirds of OpenCLIP's fused in_proj: the same weights either way)."""

from __future__ import annotations

import re

import torch

PATCHABLE = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)
_RESNET_PARTS = {"conv1": "in_layers.2", "conv2": "out_layers.3", "norm1": "in_layers.0", "norm2": "out_layers.0",
                 "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
          "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
          "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def ldm_unet_name(name: str, layers: int, up_attention: set[int]) -> str | None:
    """A diffusers UNet module path -> its name in the original (LDM) layout, or None if it has none.
    `layers` = layers per block; `up_attention` = up blocks that have attention layers."""
    if name in _FIXED:
        return _FIXED[name]
    per_level = layers + 1
    patterns = (
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)(.*)",
         lambda b, j, part, rest: f"input_blocks.{1 + b * per_level + j}.0.{_RESNET_PARTS.get(part, part)}{rest}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda b, j, rest: f"input_blocks.{1 + b * per_level + j}.1.{rest}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv", lambda b: f"input_blocks.{(b + 1) * per_level}.0.op"),
        (r"mid_block\.resnets\.(\d+)\.(\w+)(.*)",
         lambda j, part, rest: f"middle_block.{2 * j}.{_RESNET_PARTS.get(part, part)}{rest}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda rest: f"middle_block.1.{rest}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)(.*)",
         lambda b, j, part, rest: f"output_blocks.{b * per_level + j}.0.{_RESNET_PARTS.get(part, part)}{rest}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda b, j, rest: f"output_blocks.{b * per_level + j}.1.{rest}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv",
         lambda b: f"output_blocks.{b * per_level + layers}.{2 if b in up_attention else 1}.conv"),
    )
    for pattern, build in patterns:
        match = re.fullmatch(pattern, name)
        if match:
            return build(*(int(g) if g.isdigit() else g for g in match.groups()))
    return None


def _patchable(module: torch.nn.Module):
    return [(name, m) for name, m in module.named_modules() if isinstance(m, PATCHABLE) and name]


def module_table(model) -> dict[str, tuple[str, torch.nn.Module]]:
    """Every name a network file may use for a module -> (which part it is: "unet" or "te", the module)."""
    table: dict[str, tuple[str, torch.nn.Module]] = {}
    unet = model.unet
    layers = unet.config.layers_per_block if isinstance(unet.config.layers_per_block, int) else 2
    up_attention = {i for i, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None)}
    for name, module in _patchable(unet):
        entry = ("unet", module)
        table["lora_unet_" + name.replace(".", "_")] = entry
        table["unet." + name] = entry
        ldm = ldm_unet_name(name, layers, up_attention)
        if ldm:
            table["lora_unet_" + ldm.replace(".", "_")] = entry
    encoders = model.text_encoders
    kohya = ["lora_te_"] if len(encoders) == 1 else ["lora_te1_", "lora_te2_"]
    peft = ["text_encoder."] if len(encoders) == 1 else ["text_encoder.", "text_encoder_2."]
    for encoder, kohya_prefix, peft_prefix in zip(encoders, kohya, peft, strict=True):
        for name, module in _patchable(encoder):
            path = name.removeprefix("text_model.")
            entry = ("te", module)
            table[kohya_prefix + "text_model_" + path.replace(".", "_")] = entry
            table[peft_prefix + "text_model." + path] = entry
    return table
