"""The one denoising loop: every mode (txt2img, img2img, inpaint with either kind of model) and every prompt
feature (weights, schedules, alternation, AND) runs through the `Denoiser`.

`PromptConds` says which conditioning each step uses; `Denoiser` runs the UNet with classifier-free guidance
over them (cond and uncond in one batch when their lengths match, as separate calls when not). The samplers
drive it (sample.py): k-diffusion's in sigma space (kdiffusion.py), and A1111's on DDPM timesteps
(timestep_samplers.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from backend.control.inject import ControlPass
from backend.loading.detect import Family
from backend.prompts.encode import Conditioning, PromptEncoder
from backend.prompts.parse import split_and
from backend.prompts.schedule import prompt_schedule

# A schedule: [(last 0-based step it is used at, conditioning), ...]
CondSchedule = list[tuple[int, Conditioning]]


@dataclass
class PromptConds:
    """The conditioning of one prompt at each step: its AND subprompts, each with a weight and a schedule."""

    subprompts: list[tuple[float, CondSchedule]]

    def at(self, step: int) -> list[tuple[float, Conditioning]]:
        return [(weight, _pick(schedule, step)) for weight, schedule in self.subprompts]


def _pick(schedule: CondSchedule, step: int) -> Conditioning:
    return next((cond for last, cond in schedule if step <= last), schedule[-1][1])


def encode_schedule(encoder: PromptEncoder, text: str, steps: int, clip_skip: int,
                    check_interrupt: Callable[[], None] | None, first_pass_steps: int | None = None) -> CondSchedule:
    """Each distinct text of the prompt's edit/alternation schedule, encoded once (the encoder caches)."""
    return [(last, encoder.encode([part], clip_skip, len(encoder.chunks(part)), check_interrupt))
            for last, part in prompt_schedule(text, steps, first_pass_steps)]


def build_conds(encoder: PromptEncoder, prompt: str, negative: str, steps: int, clip_skip: int,
                check_interrupt: Callable[[], None] | None = None,
                first_pass_steps: int | None = None) -> tuple[PromptConds, PromptConds]:
    """(cond, uncond) as A1111 builds them: the prompt is split at AND (each part with its `:weight`), every
    part gets its schedule; the negative prompt has a schedule but no AND. SDXL with an empty negative prompt
    is conditioned on zeros."""
    cond = PromptConds([(weight, encode_schedule(encoder, text, steps, clip_skip, check_interrupt, first_pass_steps))
                        for text, weight in split_and(prompt)])
    if encoder.family is Family.SDXL and negative == "":
        uncond = PromptConds([(1.0, [(steps, encoder.zeros(1, 1))])])
    else:
        uncond = PromptConds([(1.0, encode_schedule(encoder, negative, steps, clip_skip, check_interrupt,
                                                    first_pass_steps))])
    return cond, uncond


def _pad_to(embeds: torch.Tensor, length: int) -> torch.Tensor:
    """Lengthen (1, n, dim) to `length` positions by repeating the last vector (A1111's AND padding)."""
    missing = length - embeds.shape[1]
    return embeds if missing <= 0 else torch.cat([embeds, embeds[:, -1:].expand(-1, missing, -1)], dim=1)


@dataclass
class Denoiser:
    """UNet + classifier-free guidance: uncond + cfg * sum_i w_i (cond_i - uncond), on the model's output."""

    unet: torch.nn.Module
    cond: PromptConds
    uncond: PromptConds
    cfg_scale: float
    dtype: torch.dtype
    sdxl_size: tuple[int, int] | None = None  # (height, width) for SDXL's size conditioning
    inpaint_channels: torch.Tensor | None = None  # 9-channel models: mask + masked-image latents, (B, 5, h, w)
    s_min_uncond: float = 0.0  # A1111's Negative Guidance minimum sigma (NGMS)
    s_min_uncond_all: bool = False
    pad_conds: str = ""  # A1111's options: "v0" (pad_cond_uncond_v0), "pad" (pad_cond_uncond) or "" (off)
    empty: Conditioning | None = None  # the empty prompt's conditioning, which "pad" appends
    batch_cond_uncond: bool = True  # A1111's option: off runs the uncond and the conds as separate UNet calls
    upcast: bool = False  # A1111's --upcast-sampling: half-precision weights under autocast (norms, softmax in fp32)
    aesthetic_scores: tuple[float, float] | None = None  # SDXL refiner: (negative, positive) prompts' scores
    control: ControlPass | None = None  # ControlNet units of this sampling pass (backend/control)
    skip_early_cond: float = 0.0  # A1111's option: no uncond while call / launched_calls is at most this
    launched_calls: int = 0  # the pass's steps as launched, twice for samplers that call the model twice a step

    def skips_uncond(self, step: int, level: float | torch.Tensor | None) -> bool:
        """A1111's skip_early_cond (the pass's first model calls), then NGMS: on odd model calls (every call
        with s_min_uncond_all), below `s_min_uncond`. The uncond pass is skipped and the first conditioning's
        output stands in for it. `level` is what NGMS compares: the sigma for k-diffusion samplers, the
        timestep for DDIM/PLMS/UniPC."""
        if self.skip_early_cond > 0 and self.launched_calls and step / self.launched_calls <= self.skip_early_cond:
            return True
        return bool(self.s_min_uncond > 0 and level is not None and (step % 2 or self.s_min_uncond_all)
                    and level < self.s_min_uncond)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, step: int,
                 level: float | torch.Tensor | None = None) -> torch.Tensor:
        """The guided model output."""
        return self.guide(x, t, step, level)[0]

    def guide(self, x: torch.Tensor, t: torch.Tensor, step: int,
              level: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided output, unconditional output): DDIM CFG++ steps along the unconditional one."""
        conds = self.cond.at(step)
        uncond = self.uncond.at(step)[0][1]
        length = max(c.embeds.shape[1] for _, c in conds)
        cond_embeds = [_pad_to(c.embeds, length) for _, c in conds]
        uncond_embeds = uncond.embeds
        if uncond_embeds.shape[1] != length and self.pad_conds:
            cond_embeds, uncond_embeds = self._padded(cond_embeds, uncond_embeds)
            length = uncond_embeds.shape[1]
        batch = x.shape[0]
        if self.skips_uncond(step, level):
            out_conds = self._unet(cond_embeds, [c.pooled for _, c in conds], x, t, 0).chunk(len(conds))
            out_uncond = out_conds[0]
        elif uncond_embeds.shape[1] == length and self.batch_cond_uncond:
            outs = self._unet([uncond_embeds, *cond_embeds], [uncond.pooled, *(c.pooled for _, c in conds)], x, t,
                              1)
            out_uncond, out_conds = outs[:batch], outs[batch:].chunk(len(conds))
        else:  # different lengths: separate calls rather than padding (A1111's pad_cond_uncond=False)
            out_uncond = self._unet([uncond_embeds], [uncond.pooled], x, t, 1)
            out_conds = self._unet(cond_embeds, [c.pooled for _, c in conds], x, t, 0).chunk(len(conds))
        guided = out_uncond
        for (weight, _), out in zip(conds, out_conds, strict=True):
            guided = guided + self.cfg_scale * (weight * (out - out_uncond))
        return guided, out_uncond

    def _time_ids(self, copies: int, negatives: int, batch: int) -> torch.Tensor:
        """SDXL's added numbers per image: size, crop (0, 0) and target size; the refiner's: size, crop and the
        aesthetic score (A1111's low score for the negative prompt, high for the others)."""
        h, w = self.sdxl_size
        if self.aesthetic_scores is None:
            rows = [[h, w, 0, 0, h, w]] * copies
        else:
            low, high = self.aesthetic_scores
            rows = [[h, w, 0, 0, low if i < negatives else high] for i in range(copies)]
        return torch.tensor(rows, dtype=self.dtype).repeat_interleave(batch, dim=0)

    def _padded(self, cond_embeds: list[torch.Tensor], uncond: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Cond and uncond of one length, so they run in one batch, as A1111's CFGDenoiser pads them. v0: the
        uncond's last vector repeated (or the uncond cut). pad: the shorter side gets the empty prompt's
        chunks appended."""
        length = cond_embeds[0].shape[1]
        if self.pad_conds == "v0":
            return cond_embeds, _pad_to(uncond, length)[:, :length]
        chunk = self.empty.embeds
        if uncond.shape[1] < length:
            return cond_embeds, torch.cat([uncond] + [chunk] * ((length - uncond.shape[1]) // chunk.shape[1]), 1)
        extra = [chunk] * ((uncond.shape[1] - length) // chunk.shape[1])
        return [torch.cat([e, *extra], 1) for e in cond_embeds], uncond

    def _unet(self, embeds: list[torch.Tensor], pooled: list, x: torch.Tensor, t: torch.Tensor,
              negatives: int) -> torch.Tensor:
        """One UNet call for several conditionings (the first `negatives` of them the negative prompt's); each
        is repeated for the batch's images."""
        batch, copies = x.shape[0], len(embeds)
        context = torch.cat([e.expand(batch, -1, -1) for e in embeds]).to(x.device, self.dtype)
        sample = torch.cat([x] * copies)
        t = torch.cat([t] * copies) if t.dim() else t  # a timestep per image (k-diffusion) or one for all
        if self.inpaint_channels is not None:
            sample = torch.cat([sample, torch.cat([self.inpaint_channels] * copies).to(sample)], dim=1)
        kwargs = {}
        if self.sdxl_size is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.cat([p.expand(batch, -1) for p in pooled]).to(x.device, self.dtype),
                "time_ids": self._time_ids(copies, negatives, batch).to(x.device)}
        with torch.autocast(x.device.type, dtype=self.dtype, enabled=self.upcast and self.dtype == torch.float16):
            if self.control is None:
                return self.unet(sample, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
            mark = torch.tensor([0.0 if i < negatives else 1.0 for i in range(copies)], device=sample.device)
            mark = mark.repeat_interleave(batch).reshape(-1, 1, 1, 1)  # 1: the prompt's rows
            kwargs.update(self._control_kwargs(sample, t, context, kwargs.get("added_cond_kwargs"), mark))
            out = self.unet(sample, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
            return self.control.adjust(sample, t, out, mark)

    def _control_kwargs(self, sample: torch.Tensor, t: torch.Tensor, context: torch.Tensor, added: dict | None,
                        mark: torch.Tensor) -> dict:
        """The ControlNet units' residuals for this call, as the UNet's extra skip-connection inputs."""
        residuals = self.control.residuals(sample, t, context, added, mark)
        if residuals is None:
            return {}
        down, mid = residuals
        return {"down_block_additional_residuals": tuple(r.to(sample.dtype) for r in down),
                "mid_block_additional_residual": mid.to(sample.dtype)}
