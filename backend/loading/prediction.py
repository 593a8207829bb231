"""Decide whether an SD 2.x checkpoint predicts noise ("epsilon") or velocity ("v_prediction").

768-v and 512-base models have identical tensor shapes, so the answer comes from, in order: the user's
override, a `<name>.yaml` sidecar (`parameterization: "v"`), a `v_pred` key in the file, or a numeric probe."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch

EPSILON = "epsilon"
V_PREDICTION = "v_prediction"


def from_sidecar(checkpoint: Path) -> str | None:
    yaml = checkpoint.with_suffix(".yaml")
    if not yaml.is_file():
        return None
    match = re.search(r"parameterization:\s*[\"']?(\w+)", yaml.read_text(errors="replace"))
    if match is None:
        return EPSILON
    return V_PREDICTION if match.group(1) == "v" else EPSILON


def from_keys(keys) -> str | None:
    return V_PREDICTION if "v_pred" in keys else None


@torch.no_grad()
def probe(predict: Callable[[torch.Tensor, int], torch.Tensor], alphas_cumprod: torch.Tensor) -> str:
    """Ask the model to denoise pure noise over a blank image at a late timestep.

    With x0 = 0 the noisy input is sqrt(1 - a) * eps. An epsilon model answers ~eps (norm ratio ~1);
    a v model answers v = sqrt(a) * eps - sqrt(1 - a) * x0 = sqrt(a) * eps, which is small there."""
    t = 900
    a = alphas_cumprod[t]
    eps = torch.randn((1, 4, 64, 64), generator=torch.Generator("cpu").manual_seed(0))
    out = predict((1 - a).sqrt() * eps, t)
    ratio = (out.float().norm() / eps.norm()).item()
    return EPSILON if ratio > 0.5 else V_PREDICTION


def scheduler_base_config(prediction_type: str) -> dict:
    """The noise schedule all SD 1.x / 2.x / XL checkpoints were trained with (they do not store it)."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type=prediction_type, steps_offset=1, timestep_spacing="leading", clip_sample=False,
                set_alpha_to_one=False, skip_prk_steps=True)
