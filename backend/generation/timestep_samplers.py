"""A1111's own timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC), from the DDIM, PLMS and UniPC papers as A1111
1.10 runs them: they work on DDPM timesteps with the model's epsilon, not in sigma space.

A1111's quirks are kept, since they decide the pixels: the timesteps are `range(0, 1000, 1000 // steps) + 1`
(so 7 steps give 8 timesteps), the loop never evaluates the first one (it is only the last step's target), and
every DDIM step draws noise from the image's generator even at eta 0."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from backend.samplers import UNIPC_SKIP_TYPES, UNIPC_VARIANTS, UniPCSettings  # noqa: F401 - re-exported

# eps_model(x, t) -> (guided epsilon, unconditional epsilon)
EpsModel = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def a1111_timesteps(steps: int, discard_penultimate: bool = False) -> list[int]:
    steps += 1 if discard_penultimate else 0
    return [min(t + 1, 999) for t in range(0, 1000, 1000 // steps)]


@dataclass
class Coefficients:
    """alphas_cumprod at each timestep and at the one before it in the list (float64 like A1111's alphas_prev)."""

    alphas: list[float]  # on the host, read once: each step's arithmetic then never waits for the device
    alphas_prev: list[float]

    @classmethod
    def of(cls, alphas_cumprod: torch.Tensor, timesteps: list[int]) -> Coefficients:
        index = torch.tensor(timesteps)
        previous = torch.tensor([timesteps[0], *timesteps[:-1]])
        return cls(alphas_cumprod[index].tolist(), alphas_cumprod[previous].double().tolist())

    def step(self, x: torch.Tensor, eps: torch.Tensor, index: int, direction: torch.Tensor | None = None,
             sigma: float = 0.0) -> torch.Tensor:
        """x at the previous timestep: the clean estimate from `eps`, plus the way back along `direction`."""
        a_t, a_prev = self.alphas[index], self.alphas_prev[index]
        pred_x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        direction = eps if direction is None else direction
        return a_prev**0.5 * pred_x0 + (1.0 - a_prev - sigma**2) ** 0.5 * direction

    def ddim_sigma(self, index: int, eta: float) -> float:
        a_t, a_prev = self.alphas[index], self.alphas_prev[index]
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


class VpSchedule:
    """UniPC's view of the DDPM schedule: continuous time t in (0, 1], DDPM step n at t = (n + 1) / N, and
    log alpha (half the log of alphas_cumprod) linear between those points."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        self.log_alphas = 0.5 * np.log(alphas_cumprod.double().numpy())
        self.n = len(self.log_alphas)
        self.times = np.arange(1, self.n + 1) / self.n

    def log_alpha(self, t: float) -> float:
        return float(np.interp(t, self.times, self.log_alphas))

    def alpha(self, t: float) -> float:
        return float(np.exp(self.log_alpha(t)))

    def std(self, t: float) -> float:
        return float(np.sqrt(1.0 - np.exp(2.0 * self.log_alpha(t))))

    def lam(self, t: float) -> float:
        """Half the log signal-to-noise ratio."""
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * float(np.log(1.0 - np.exp(2.0 * log_alpha)))

    def t_of_lambda(self, lam: float) -> float:
        log_alpha = -0.5 * float(np.logaddexp(0.0, -2.0 * lam))
        return float(np.interp(log_alpha, self.log_alphas[::-1], self.times[::-1]))

    def model_timestep(self, t: float) -> float:
        """The (fractional) DDPM timestep the UNet is called with."""
        return (t - 1.0 / self.n) * 1000.0

    def grid(self, skip_type: str, t_start: float, steps: int) -> list[float]:
        t_end = 1.0 / self.n
        if skip_type == "logSNR":
            lambdas = np.linspace(self.lam(t_start), self.lam(t_end), steps + 1)
            return [self.t_of_lambda(lam) for lam in lambdas]
        if skip_type == "time_quadratic":
            return list(np.linspace(t_start**0.5, t_end**0.5, steps + 1) ** 2)
        return list(np.linspace(t_start, t_end, steps + 1))


def unipc(eps_model: EpsModel, x, timesteps: list[int], alphas_cumprod, on_step, settings: UniPCSettings,
          img2img: bool = False):
    """UniPC (multistep, predicting x0), as A1111 runs it: `len(timesteps)` steps on its own continuous grid
    from t = 1 (img2img: just above the last timestep of the shortened list) down to 1 / N. Every step after
    the first `order` warm-up steps has order `order` (lowered over the last steps with lower_order_final), and
    every step but the last corrects its prediction with the model value at the predicted point, which is then
    kept as that step's model value. An order above the step count runs at the step count (A1111 refuses)."""
    vp = VpSchedule(alphas_cumprod)
    steps = len(timesteps)
    t_start = timesteps[-1] / 1000 + 1 / 1000 if img2img else 1.0
    grid = vp.grid(settings.skip_type, t_start, steps)
    order = min(settings.order, steps)

    def predict_x0(x, t):
        eps, _ = eps_model(x, vp.model_timestep(t))
        return (x - vp.std(t) * eps) / vp.alpha(t)

    history = [(grid[0], predict_x0(x, grid[0]))]  # (t, x0 prediction), newest last
    for step in range(1, steps + 1):
        step_order = step if step < order else order
        if step >= order and settings.lower_order_final:
            step_order = min(order, steps + 1 - step)
        correct = step < order or step < steps
        x, x0 = _unipc_step(vp, settings.variant, x, history[-step_order:], grid[step],
                            predict_x0 if correct else None)
        history = [*history, (grid[step], x0)][-order:]
        on_step(step - 1, x)
    return x


def _unipc_step(vp: VpSchedule, variant: str, x, history, t: float, predict_x0):
    """One UniPC-B(h) step to time t from the last entry of `history`, with len(history) as its order: the
    predictor extrapolates the x0 predictions in lambda; `predict_x0` (None on the last step) gives the x0
    prediction at the predicted point, and the corrector uses it as one more point. Returns (x, that x0)."""
    t_prev, x0_prev = history[-1]
    h = vp.lam(t) - vp.lam(t_prev)
    ratios = [(vp.lam(t_i) - vp.lam(t_prev)) / h for t_i, _ in reversed(history[:-1])]
    slopes = [(x0_i - x0_prev) / r for r, (_, x0_i) in zip(ratios, reversed(history[:-1]), strict=True)]
    hh = -h
    phi_1 = float(np.expm1(hh))
    b_h = hh if variant == "bh1" else phi_1
    rows, b = _unipc_system(ratios + [1.0], hh, phi_1, b_h)
    alpha_t = vp.alpha(t)
    x_base = vp.std(t) / vp.std(t_prev) * x - alpha_t * phi_1 * x0_prev

    def weighted(weights):
        return sum(w * s for w, s in zip(weights, slopes, strict=False))

    x_t = x_base
    if slopes:
        rhos_p = [0.5] if len(history) == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1])
        x_t = x_base - alpha_t * b_h * weighted(rhos_p)
    if predict_x0 is None:
        return x_t, None
    x0_t = predict_x0(x_t, t)
    rhos_c = [0.5] if len(history) == 1 else np.linalg.solve(rows, b)
    correction = (weighted(rhos_c[:-1]) if slopes else 0) + rhos_c[-1] * (x0_t - x0_prev)
    return x_base - alpha_t * b_h * correction, x0_t


def _unipc_system(ratios: list[float], hh: float, phi_1: float, b_h: float):
    """The order conditions: rows r^(k-1) and right-hand sides k! phi_k(hh) / B(h), for k = 1..order."""
    rows, b = [], []
    phi_k, factorial = phi_1 / hh - 1, 1
    for k in range(1, len(ratios) + 1):
        rows.append([r ** (k - 1) for r in ratios])
        b.append(phi_k * factorial / b_h)
        factorial *= k + 1
        phi_k = phi_k / hh - 1 / factorial
    return np.array(rows), np.array(b)
