"""Full-size SD 1.5 and SDXL architectures with random weights, written as single-file checkpoints (the layout
users download) plus a diffusers config folder so the plain-diffusers baseline can load the same file offline.

Random weights cost exactly the same compute as real ones; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tests.fixtures import tiny_models
from tests.fixtures.reference import reference_pipeline

CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
OPENCLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                     num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SDXL_UNET = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)


def _vae(sample_size: int, scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         sample_size=sample_size, scaling_factor=scaling_factor)


def build(arch: str) -> tiny_models.TinyModel:
    torch.manual_seed(0)
    if arch == "sd15":
        return tiny_models.TinyModel("sd1", UNet2DConditionModel(**SD15_UNET), _vae(512, 0.18215),
                                     [CLIPTextModel(CLIPTextConfig(**CLIP_L))])
    encoders = [CLIPTextModel(CLIPTextConfig(**CLIP_L)), CLIPTextModelWithProjection(CLIPTextConfig(**OPENCLIP_BIGG))]
    return tiny_models.TinyModel("sdxl", UNet2DConditionModel(**SDXL_UNET), _vae(1024, 0.13025), encoders)


def write_files(arch: str, workdir: Path) -> tuple[Path, Path]:
    """<workdir>/<arch>/models/Stable-diffusion/<arch>.safetensors (fp16, like the files users download) and a
    diffusers config folder without weights. Reused when they already exist."""
    root = workdir / arch
    checkpoint = root / "models" / "Stable-diffusion" / f"{arch}.safetensors"
    config_dir = root / "diffusers-config"
    if checkpoint.exists() and (config_dir / "model_index.json").exists():
        return checkpoint, config_dir
    model = build(arch)
    for module in [model.unet, model.vae, *model.text_encoders]:
        module.eval().requires_grad_(False).half()  # fp16 before the layout conversion copies it: SDXL fits in RAM
    _write_config_folder(reference_pipeline(model, "Euler", None), config_dir)
    partial = checkpoint.with_name("writing.safetensors")  # renamed when complete, so a broken run is redone
    tiny_models.write_checkpoint(model, partial, dtype=torch.float16).rename(checkpoint)
    return checkpoint, config_dir


def _write_config_folder(pipe, folder: Path) -> None:
    pipe.save_config(folder)
    for name, component in pipe.components.items():
        if component is None:
            continue
        if hasattr(component, "save_config"):  # diffusers models and schedulers
            component.save_config(folder / name)
        elif hasattr(component, "config"):  # transformers models: the config only, not the weights
            (folder / name).mkdir(parents=True, exist_ok=True)
            component.config.to_json_file(folder / name / "config.json")
        else:  # tokenizers
            component.save_pretrained(folder / name)
