"""ControlNet residuals for one UNet call, as the extension's hook adds them: each active unit's ControlNet
sees the UNet's own input (scaled latent, timestep, cross-attention rows, SDXL's added embedding) and its
control map; its residuals (one per input block, then the middle block's) are scaled by the unit's weight and
control mode and summed over the units.

The guidance window is decided as the extension decides it: `sampling_step / total_sampling_steps`, where the
step is the one the sampler last reported done (A1111's `state.sampling_step`, 0 at the start of each pass) and
the total is the pass's steps (img2img and the hires pass: t_enc + 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.control.units import ControlUnit

SOFT_DECAY = 0.825  # "My prompt is more important": layer i of 13 gets weight * 0.825 ** (12 - i)


@dataclass
class ActiveUnit:
    """A unit ready to run: its ControlNet and its control map at the first pass's and the hires pass's size."""

    unit: ControlUnit
    model: torch.nn.Module
    hint: torch.Tensor  # (1, 3, H, W) in [0, 1], on the CPU
    hr_hint: torch.Tensor | None = None
    soft_in_hires: bool = False  # canny and mlsd: soft injection in the hires pass (the extension's rule)
    offload: bool = False  # low VRAM: kept on the CPU between calls


class ControlPass:
    """The units of one sampling pass (the first, or hires fix's second)."""

    def __init__(self, units: list[ActiveUnit], hires: bool, hires_enabled: bool, sdxl: bool):
        self.units, self.hires, self.hires_enabled, self.sdxl = units, hires, hires_enabled, sdxl
        self.sampling_step, self.total_steps = 0, 1

    def begin(self, total_steps: int) -> None:
        self.sampling_step, self.total_steps = 0, max(1, total_steps)

    def step_done(self, step: int) -> None:
        self.sampling_step = step

    def _active(self, unit: ControlUnit) -> bool:
        done = self.sampling_step / self.total_steps
        if done < unit.guidance_start or done > unit.guidance_end:
            return False
        if not self.hires_enabled or unit.hr_option == "Both":
            return True
        return self.hires if unit.hr_option == "High res only" else not self.hires

    def residuals(self, sample: torch.Tensor, t: torch.Tensor, context: torch.Tensor, added: dict | None,
                  cond_mark: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """(input-block residuals, middle-block residual) summed over the active units; None when none is.
        `cond_mark` is 1 for rows of the prompt, 0 for rows of the negative prompt, shaped (rows, 1, 1, 1)."""
        total = None
        x = sample[:, :4]  # an inpainting UNet's extra channels are not the ControlNet's
        for active in self.units:
            if not self._active(active.unit):
                continue
            control = self._run(active, x, t, context, added)
            control = [c * s for c, s in zip(control, self._scales(active), strict=False)]
            if active.unit.control_mode == "ControlNet is more important":
                control = [c * cond_mark.to(c.dtype) for c in control]
            total = control if total is None else [a + b for a, b in zip(total, control, strict=True)]
        return None if total is None else (total[:-1], total[-1])

    def _scales(self, active: ActiveUnit) -> list[float]:
        weight = active.unit.weight
        soft = active.unit.control_mode != "Balanced" or (self.hires and active.soft_in_hires)
        scales = [weight * SOFT_DECAY ** float(12 - i) for i in range(13)] if soft else [weight] * 13
        return scales[:10] if self.sdxl else scales

    def _run(self, active: ActiveUnit, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
             added: dict | None) -> list[torch.Tensor]:
        hint = active.hr_hint if self.hires and active.hr_hint is not None else active.hint
        model = active.model
        if active.offload:
            model.to(x.device)
        try:
            dtype = next(model.parameters()).dtype
            hint = hint.to(x.device, dtype).expand(x.shape[0], -1, -1, -1)
            kwargs = {"added_cond_kwargs": added} if added is not None else {}
            down, mid = model(x.to(dtype), t, encoder_hidden_states=context.to(dtype), controlnet_cond=hint,
                              conditioning_scale=1.0, return_dict=False, **kwargs)
        finally:
            if active.offload:
                model.to("cpu")
        return [*down, mid]
