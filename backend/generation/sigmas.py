"""The noise levels (sigmas) A1111's k-diffusion samplers step through, for SD's discrete training schedule.

SD was trained on 1000 timesteps with scaled-linear betas; sigma(t) = sqrt((1 - alpha_bar) / alpha_bar). Going
between sigma and a (fractional) timestep interpolates log-sigma linearly between neighbouring timesteps, as
k-diffusion's DiscreteSchedule does; the UNet is then called with that fractional timestep."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

TRAIN_STEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


def default_alphas_cumprod() -> torch.Tensor:
    """SD's training schedule (scaled-linear betas), as LDM computes it: in float64, kept as float32."""
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_STEPS, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)


class DiscreteSchedule:
    def __init__(self, alphas_cumprod: torch.Tensor | None = None):
        """`alphas_cumprod`: the checkpoint's own schedule where it carries one (A1111 loads it with the
        weights), else SD's default."""
        self.alphas_cumprod = default_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.float().cpu()
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def _log_sigmas_on(self, device: torch.device) -> torch.Tensor:
        """The table, copied to `device` once (not at every model call)."""
        if device not in self._on_device:
            self._on_device[device] = self.log_sigmas.to(device)
        return self._on_device[device]

    first_t, last_t = TRAIN_STEPS - 1, 0  # the Uniform schedule's timesteps run from first_t to last_t

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep of `sigma` (log-sigma interpolation between the two nearest timesteps)."""
        log_sigma = sigma.log()
        log_sigmas = self._log_sigmas_on(sigma.device)
        dists = log_sigma - log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        high = low + 1
        log_low, log_high = log_sigmas[low], log_sigmas[high]
        w = ((log_low - log_sigma) / (log_low - log_high)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


    def boundary(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """The denoised estimate as the sampler sees it (LCM rescales it; other models use it as is)."""
        return denoised


class LcmSchedule(DiscreteSchedule):
    """A1111's LCM sampler's schedule: only the 50 timesteps LCM distils (19, 39, ..., 999). A sigma goes to
    the nearest of them (no interpolation); a timestep between them interpolates log-sigma."""

    SKIP = 20
    first_t, last_t = TRAIN_STEPS - 1, SKIP - 1

    def __init__(self, alphas_cumprod: torch.Tensor | None = None):
        super().__init__(alphas_cumprod)
        self.sigmas = self.sigmas[self.SKIP - 1 :: self.SKIP]
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        index = (sigma.log() - self._log_sigmas_on(sigma.device)[:, None]).abs().argmin(dim=0).view(sigma.shape)
        return (index * self.SKIP + self.SKIP - 1).float()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return super().t_to_sigma(((t - (self.SKIP - 1)) / self.SKIP).float().clamp(0, len(self.sigmas) - 1))

    def boundary(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
        """LCM's consistency-model output: c_out * denoised + c_skip * x at 10x the timestep (sigma_data 0.5)."""
        scaled = self.sigma_to_t(sigma.reshape(1)).to(x.device) * 10.0
        c_skip = 0.25 / (scaled**2 + 0.25)
        c_out = scaled / (scaled**2 + 0.25) ** 0.5
        return c_out * denoised + c_skip * x


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


@dataclass(frozen=True)
class SigmaRange:
    """A1111's sigma_min, sigma_max and rho options: 0 keeps the model's sigma range and the schedule's rho."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0

    def low(self, schedule: DiscreteSchedule) -> float:
        return self.sigma_min or schedule.sigma_min

    def high(self, schedule: DiscreteSchedule) -> float:
        return self.sigma_max or schedule.sigma_max


def uniform(schedule: DiscreteSchedule, n: int, limits: SigmaRange) -> torch.Tensor:
    """Timesteps evenly from the last to 0, as sigmas (k-diffusion's `get_sigmas`; no range of its own)."""
    return _append_zero(schedule.t_to_sigma(torch.linspace(schedule.first_t, schedule.last_t, n)))


def karras(schedule: DiscreteSchedule, n: int, limits: SigmaRange) -> torch.Tensor:
    return karras_between(n, limits.low(schedule), limits.high(schedule), limits.rho or 7.0)


def karras_between(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((high + ramp * (low - high)) ** rho)


def exponential(schedule: DiscreteSchedule, n: int, limits: SigmaRange) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(limits.high(schedule)), math.log(limits.low(schedule)), n).exp())


def sgm_uniform(schedule: DiscreteSchedule, n: int, limits: SigmaRange) -> torch.Tensor:
    """Evenly spaced timesteps from sigma_max's down to sigma_min's, without the last (A1111's SGM Uniform)."""
    start = schedule.sigma_to_t(torch.tensor(limits.high(schedule)))
    end = schedule.sigma_to_t(torch.tensor(limits.low(schedule)))
    sigmas = [schedule.t_to_sigma(t) for t in torch.linspace(start, end, n + 1)[:-1]]
    return torch.FloatTensor([*[s.item() for s in sigmas], 0.0])


SCHEDULE_FUNCTIONS = {"Uniform": uniform, "Karras": karras, "Exponential": exponential, "SGM Uniform": sgm_uniform}


def sigmas_for(schedule: DiscreteSchedule, label: str, steps: int, discard_penultimate: bool = False,
               limits: SigmaRange = SigmaRange()) -> torch.Tensor:
    """steps + 1 sigmas ending in 0. Samplers that discard the next-to-last sigma are given one step more
    first, so they still take `steps` steps (as A1111 does)."""
    if discard_penultimate:
        sigmas = SCHEDULE_FUNCTIONS[label](schedule, steps + 1, limits)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return SCHEDULE_FUNCTIONS[label](schedule, steps, limits)
