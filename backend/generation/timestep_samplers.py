"""A1111's own timestep samplers (DDIM, DDIM CFG++, PLMS), from the DDIM and PLMS papers as A1111 1.10 runs them:
they work on integer DDPM timesteps with the model's epsilon, not in sigma space.

A1111's quirks are kept, since they decide the pixels: the timesteps are `range(0, 1000, 1000 // steps) + 1`
(so 7 steps give 8 timesteps), the loop never evaluates the first one (it is only the last step's target), and
every DDIM step draws noise from the image's generator even at eta 0."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# eps_model(x, t) -> (guided epsilon, unconditional epsilon)
EpsModel = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def a1111_timesteps(steps: int, discard_penultimate: bool = False) -> list[int]:
    steps += 1 if discard_penultimate else 0
    return [min(t + 1, 999) for t in range(0, 1000, 1000 // steps)]


@dataclass
class Coefficients:
    """alphas_cumprod at each timestep and at the one before it in the list (float64 like A1111's alphas_prev)."""

    alphas: torch.Tensor
    alphas_prev: torch.Tensor

    @classmethod
    def of(cls, alphas_cumprod: torch.Tensor, timesteps: list[int]) -> Coefficients:
        index = torch.tensor(timesteps)
        previous = torch.tensor([timesteps[0], *timesteps[:-1]])
        return cls(alphas_cumprod[index], alphas_cumprod[previous].double())

    def step(self, x: torch.Tensor, eps: torch.Tensor, index: int, direction: torch.Tensor | None = None,
             sigma: float = 0.0) -> torch.Tensor:
        """x at the previous timestep: the clean estimate from `eps`, plus the way back along `direction`."""
        a_t, a_prev = self.alphas[index].item(), self.alphas_prev[index].item()
        pred_x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        direction = eps if direction is None else direction
        return a_prev**0.5 * pred_x0 + (1.0 - a_prev - sigma**2) ** 0.5 * direction

    def ddim_sigma(self, index: int, eta: float) -> float:
        a_t, a_prev = self.alphas[index].double().item(), self.alphas_prev[index].item()
        return eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5


def ddim(eps_model: EpsModel, x, timesteps: list[int], alphas_cumprod, noise: Callable[[], torch.Tensor],
         on_step, eta: float = 0.0, cfgpp: bool = False):
    """DDIM; with `cfgpp` the way back follows the unconditional epsilon (CFG++, guidance scale / 12.5)."""
    coef = Coefficients.of(alphas_cumprod, timesteps)
    for i, index in enumerate(range(len(timesteps) - 1, 0, -1)):
        eps, eps_uncond = eps_model(x, timesteps[index])
        sigma = coef.ddim_sigma(index, eta)
        x = coef.step(x, eps, index, eps_uncond if cfgpp else None, sigma) + sigma * noise()
        on_step(i, x)
    return x


_ADAMS_BASHFORTH = {1: (3 / 2, -1 / 2), 2: (23 / 12, -16 / 12, 5 / 12), 3: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def plms(eps_model: EpsModel, x, timesteps: list[int], alphas_cumprod, on_step):
    """Pseudo linear multistep: an improved-Euler first step, then Adams-Bashforth on up to 4 past epsilons."""
    coef = Coefficients.of(alphas_cumprod, timesteps)
    history: list[torch.Tensor] = []  # newest last
    for i, index in enumerate(range(len(timesteps) - 1, 0, -1)):
        eps, _ = eps_model(x, timesteps[index])
        if not history:
            trial = coef.step(x, eps, index)
            eps_next, _ = eps_model(trial, timesteps[max(index - 1, 0)])
            combined = (eps + eps_next) / 2
        else:
            weights = _ADAMS_BASHFORTH[len(history)]
            combined = sum(w * e for w, e in zip(weights, [eps, *reversed(history)], strict=False))
        x = coef.step(x, combined, index)
        history = [*history, eps][-3:]
        on_step(i, x)
    return x
