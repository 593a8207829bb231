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
import torch.nn.functional as F

from backend.control.images import model_input
from backend.control.units import ControlUnit
from backend.generation.sigmas import default_alphas_cumprod

SOFT_DECAY = 0.825  # "My prompt is more important": layer i of 13 gets weight * 0.825 ** (12 - i)


@dataclass
class ActiveUnit:
    """A unit ready to run: its ControlNet and its control map at the first pass's and the hires pass's size."""

    unit: ControlUnit
    model: torch.nn.Module
    hint: torch.Tensor  # (1, 3, H, W) in [0, 1] (inpaint: (1, 4, H, W) with the mask), on the CPU
    hr_hint: torch.Tensor | None = None
    soft_in_hires: bool = False  # canny and mlsd: soft injection in the hires pass (the extension's rule)
    offload: bool = False  # low VRAM: kept on the CPU between calls
    adjusts_output: str = ""  # "inpaint_only" / "colorfix": the UNet output is corrected toward the map
    latent: torch.Tensor | None = None  # the map's VAE latent (scaled), for those corrections
    hr_latent: torch.Tensor | None = None

    def map_for(self, hires: bool) -> torch.Tensor:
        return self.hr_hint if hires and self.hr_hint is not None else self.hint

    def latent_for(self, hires: bool) -> torch.Tensor | None:
        return self.hr_latent if hires and self.hr_latent is not None else self.latent


class ControlPass:
    """The units of one sampling pass (the first, or hires fix's second)."""

    def __init__(self, units: list[ActiveUnit], hires: bool, hires_enabled: bool, sdxl: bool):
        self.units, self.hires, self.hires_enabled, self.sdxl = units, hires, hires_enabled, sdxl
        self.sampling_step, self.total_steps = 0, 1
        self._schedule: tuple[torch.Tensor, torch.Tensor] | None = None  # made when a unit corrects the output

    def begin(self, total_steps: int) -> None:
        self.sampling_step, self.total_steps = 0, max(1, total_steps)

    def step_done(self, step: int) -> None:
        self.sampling_step = step

    def _active(self, unit: ControlUnit) -> bool:
        done = self.sampling_step / self.total_steps
        if done < unit.guidance_start or done > unit.guidance_end:
            return False
        return self._active_by_hr_option(unit)

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

    def adjust(self, sample: torch.Tensor, t: torch.Tensor, out: torch.Tensor,
               cond_mark: torch.Tensor) -> torch.Tensor:
        """The extension's corrections of the UNet's output (whatever the guidance window): tile_colorfix
        keeps the map's low frequencies, inpaint_only keeps the map outside its mask; each blended by the
        weight (clamped to 0..1)."""
        adjusting = [active for active in self.units if active.adjusts_output]
        if not adjusting:
            return out
        x = sample[:, :4].float()
        recip, recip_m1 = self._coefficients(t, x)
        for active in adjusting:
            predicted = recip * x - recip_m1 * out.float()
            origin = active.latent_for(self.hires).to(x.device, torch.float32)
            if active.adjusts_output == "colorfix":
                target = self._colorfix(active, predicted, origin, cond_mark.to(x.device))
            else:
                mask = F.max_pool2d(active.map_for(self.hires)[:, 3:4].to(x.device), (10, 10), stride=(8, 8),
                                    padding=1)
                target = predicted * mask + origin * (1 - mask)
            eps = (recip * x - target) / recip_m1
            weight = max(0.0, min(1.0, float(active.unit.weight)))
            out = (eps * weight + out.float() * (1 - weight)).to(out.dtype)
        return out

    def _coefficients(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sqrt(1 / a) and sqrt(1 / a - 1) at each row's rounded timestep, from the extension's own copy of SD's
        schedule (x0 = the first * x - the second * eps)."""
        if self._schedule is None:
            alphas = default_alphas_cumprod().double()
            self._schedule = (1 / alphas).sqrt().float(), (1 / alphas - 1).sqrt().float()
        steps = t.float().round().long().reshape(-1).expand(x.shape[0]).cpu()
        return tuple(table[steps].to(x.device).reshape(-1, 1, 1, 1) for table in self._schedule)

    def _colorfix(self, active: ActiveUnit, predicted: torch.Tensor, origin: torch.Tensor,
                  cond_mark: torch.Tensor) -> torch.Tensor:
        k = int(active.unit.threshold_a)
        if self.hires and self._active_by_hr_option(active.unit):
            k *= 2
        x0 = predicted - _blur(predicted, k) + _blur(origin, k)
        if active.unit.module == "tile_colorfix+sharp":
            detail = float(active.unit.threshold_b) * 0.01
            softened = detail * _blur(x0, k) + (1 - detail) * x0
            x0 = cond_mark * x0 + (1 - cond_mark) * softened
        return x0

    def _active_by_hr_option(self, unit: ControlUnit) -> bool:
        if not self.hires_enabled or unit.hr_option == "Both":
            return True
        return self.hires if unit.hr_option == "High res only" else not self.hires

    def _run(self, active: ActiveUnit, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
             added: dict | None) -> list[torch.Tensor]:
        hint = model_input(active.map_for(self.hires))
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


def _blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """The extension's box blur: replicate padding, a (2k + 1) average."""
    return F.avg_pool2d(F.pad(x, (k, k, k, k), mode="replicate"), (k * 2 + 1, k * 2 + 1), stride=(1, 1))
