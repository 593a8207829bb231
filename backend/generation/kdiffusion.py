"""The k-diffusion samplers A1111 1.10 runs, written from their published update rules (Karras et al. 2022;
DPM-Solver++, Lu et al. 2022), over a denoiser `model(x, sigma) -> denoised` in sigma space.

Extra noise comes from the caller: `noise()` for ancestral samplers (A1111 draws it from each image's own
CPU generator, continuing after the initial noise) and `brownian(sigma, sigma_next)` for the SDE samplers (a
Brownian tree seeded with each image's seed). `on_step(i, x)` is called once per step; it may raise to stop."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import integrate

from backend.generation.sigmas import karras_between

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Extras:
    on_step: Callable[[int, torch.Tensor], None]
    noise: Callable[[], torch.Tensor] | None = None  # ancestral noise like x
    brownian: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    eta: float = 1.0
    s_noise: float = 1.0
    s_churn: float = 0.0  # Euler, Heun, DPM2: "churn" noise added before each step between s_tmin and s_tmax
    s_tmin: float = 0.0
    s_tmax: float = float("inf")

    def churn(self, x: torch.Tensor, sigma: torch.Tensor, level: float,
              steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x with churn noise added, the raised sigma); `level` is sigma on the host (deciding on the device's
        value would wait for the device). A draw is taken every step, as k-diffusion does, so the noise stream
        stays aligned whichever steps churn."""
        if not self.s_churn:
            return x, sigma
        gamma = min(self.s_churn / steps, 2**0.5 - 1) if self.s_tmin <= level <= self.s_tmax else 0.0
        eps = self.noise() * self.s_noise
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigma**2) ** 0.5
        return x, sigma_hat


def _slope(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE."""
    return (x - denoised) / sigma


def _ancestral_split(sigma, sigma_next, eta: float):
    """(sigma to step down to deterministically, noise to add back) for one ancestral step; of device tensors
    (without reading them) or of host floats (to decide on)."""
    if not eta:
        return sigma_next, 0.0
    up = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    up = torch.minimum(sigma_next, up) if isinstance(up, torch.Tensor) else min(sigma_next, up)
    return (sigma_next**2 - up**2) ** 0.5, up


def _host(sigmas: torch.Tensor) -> list[float]:
    """The schedule on the host, read once per run: the samplers' decisions use it, so no step waits for the
    device to answer a comparison."""
    return sigmas.tolist()


def _log_time(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma.log()


def _sigma_of(t: torch.Tensor) -> torch.Tensor:
    return (-t).exp()


def euler(model: Model, x, sigmas, ex: Extras):
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        x, sigma = ex.churn(x, sigmas[i], levels[i], len(sigmas) - 1)
        denoised = model(x, sigma)
        ex.on_step(i, x)
        x = x + _slope(x, sigma, denoised) * (sigmas[i + 1] - sigma)
    return x


def euler_ancestral(model: Model, x, sigmas, ex: Extras):
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = _ancestral_split(sigmas[i], sigmas[i + 1], ex.eta)
        ex.on_step(i, x)
        x = x + _slope(x, sigmas[i], denoised) * (down - sigmas[i])
        if levels[i + 1] > 0:
            x = x + ex.noise() * ex.s_noise * up
    return x


def heun(model: Model, x, sigmas, ex: Extras):
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        x, sigma = ex.churn(x, sigmas[i], levels[i], len(sigmas) - 1)
        denoised = model(x, sigma)
        ex.on_step(i, x)
        x = _heun_step(model, x, sigma, sigmas[i + 1], denoised, levels[i + 1] == 0)
    return x


def _heun_step(model: Model, x, sigma, sigma_next, denoised, into_zero: bool):
    """One Heun step from sigma to sigma_next (an Euler step into sigma 0)."""
    d = _slope(x, sigma, denoised)
    dt = sigma_next - sigma
    x_2 = x + d * dt
    if into_zero:
        return x_2
    return x + (d + _slope(x_2, sigma_next, model(x_2, sigma_next))) / 2 * dt


def _midpoint(sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return sigma.log().lerp(target.log(), 0.5).exp()


def dpm_2(model: Model, x, sigmas, ex: Extras):
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        x, sigma = ex.churn(x, sigmas[i], levels[i], len(sigmas) - 1)
        denoised = model(x, sigma)
        ex.on_step(i, x)
        d = _slope(x, sigma, denoised)
        if levels[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma)
            continue
        mid = _midpoint(sigma, sigmas[i + 1])
        x_2 = x + d * (mid - sigma)
        x = x + _slope(x_2, mid, model(x_2, mid)) * (sigmas[i + 1] - sigma)
    return x


def dpm_2_ancestral(model: Model, x, sigmas, ex: Extras):
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = _ancestral_split(sigmas[i], sigmas[i + 1], ex.eta)
        ex.on_step(i, x)
        d = _slope(x, sigmas[i], denoised)
        if _ancestral_split(levels[i], levels[i + 1], ex.eta)[0] == 0:
            x = x + d * (down - sigmas[i])
            continue
        mid = _midpoint(sigmas[i], down)
        x_2 = x + d * (mid - sigmas[i])
        x = x + _slope(x_2, mid, model(x_2, mid)) * (down - sigmas[i])
        x = x + ex.noise() * ex.s_noise * up
    return x


def _lms_coefficient(order: int, t, i: int, j: int) -> float:
    def basis(tau):
        product = 1.0
        for k in range(order):
            if k != j:
                product *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return product

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def lms(model: Model, x, sigmas, ex: Extras, order: int = 4):
    sigmas_np = sigmas.detach().cpu().numpy()
    slopes: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ex.on_step(i, x)
        slopes = [*slopes, _slope(x, sigmas[i], denoised)][-order:]
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, sigmas_np, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(slopes), strict=False))
    return x


def dpmpp_2s_ancestral(model: Model, x, sigmas, ex: Extras):
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        down, up = _ancestral_split(sigmas[i], sigmas[i + 1], ex.eta)
        ex.on_step(i, x)
        if _ancestral_split(levels[i], levels[i + 1], ex.eta)[0] == 0:
            x = x + _slope(x, sigmas[i], denoised) * (down - sigmas[i])
        else:
            t, t_next = _log_time(sigmas[i]), _log_time(down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma_of(s) / _sigma_of(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _sigma_of(s))
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised_2
        if levels[i + 1] > 0:
            x = x + ex.noise() * ex.s_noise * up
    return x


def dpmpp_sde(model: Model, x, sigmas, ex: Extras, r: float = 0.5):
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ex.on_step(i, x)
        if levels[i + 1] == 0:
            x = x + _slope(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _log_time(sigmas[i]), _log_time(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        down, up = _ancestral_split(_sigma_of(t), _sigma_of(s), ex.eta)
        s_down = _log_time(down)
        x_2 = (_sigma_of(s_down) / _sigma_of(t)) * x - (t - s_down).expm1() * denoised
        host_t, host_t_next = -math.log(levels[i]), -math.log(levels[i + 1])  # the same times, on the host
        host_s = host_t + (host_t_next - host_t) * r
        x_2 = x_2 + ex.brownian(levels[i], math.exp(-host_s)) * ex.s_noise * up
        denoised_2 = model(x_2, _sigma_of(s))
        down, up = _ancestral_split(_sigma_of(t), _sigma_of(t_next), ex.eta)
        t_down = _log_time(down)
        blend = 1 / (2 * r)
        mixed = (1 - blend) * denoised + blend * denoised_2
        x = (_sigma_of(t_down) / _sigma_of(t)) * x - (t - t_down).expm1() * mixed
        x = x + ex.brownian(levels[i], levels[i + 1]) * ex.s_noise * up
    return x


def dpmpp_2m(model: Model, x, sigmas, ex: Extras):
    previous, levels = None, _host(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ex.on_step(i, x)
        t, t_next = _log_time(sigmas[i]), _log_time(sigmas[i + 1])
        h = t_next - t
        if previous is None or levels[i + 1] == 0:
            estimate = denoised
        else:
            r = (t - _log_time(sigmas[i - 1])) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * estimate
        previous = denoised
    return x


def dpmpp_2m_sde(model: Model, x, sigmas, ex: Extras, solver: str = "midpoint"):
    previous, h_last, levels = None, None, _host(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ex.on_step(i, x)
        if levels[i + 1] == 0:
            x = denoised
        else:
            h = _log_time(sigmas[i + 1]) - _log_time(sigmas[i])
            eta_h = ex.eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if previous is not None:
                r = h_last / h
                if solver == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - previous)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - previous)
            if ex.eta:
                noise = ex.brownian(levels[i], levels[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * ex.s_noise
            h_last = h
        previous = denoised
    return x


def dpmpp_2m_sde_heun(model: Model, x, sigmas, ex: Extras):
    return dpmpp_2m_sde(model, x, sigmas, ex, solver="heun")


def dpmpp_3m_sde(model: Model, x, sigmas, ex: Extras):
    d_1 = d_2 = h_1 = h_2 = None  # the last two denoised estimates and step sizes
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        ex.on_step(i, x)
        if levels[i + 1] == 0:
            x = denoised
        else:
            h = _log_time(sigmas[i + 1]) - _log_time(sigmas[i])
            h_eta = h * (ex.eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                slope_0, slope_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                first = slope_0 + (slope_0 - slope_1) * r0 / (r0 + r1)
                second = (slope_0 - slope_1) / (r0 + r1)
                x = x + phi_2 * first - (phi_2 / h_eta - 0.5) * second
            elif h_1 is not None:
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            if ex.eta:
                noise = ex.brownian(levels[i], levels[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * ex.eta).expm1().neg().sqrt() * ex.s_noise
            h_1, h_2 = h, h_1
        d_1, d_2 = denoised, d_1
    return x


class BrownianNoise:
    """A1111's noise for SDE samplers: one torchsde Brownian tree per image, seeded with the image's seed,
    over [smallest non-zero sigma, largest sigma]; noise between two sigmas is the tree's increment over them,
    normalised by the square root of their distance."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]):
        import torchsde  # only the SDE samplers need it

        low, high = sigmas[sigmas > 0].min(), sigmas.max()
        self.sign = 1 if low < high else -1
        self.low, self.high = min(low, high), max(low, high)
        w0 = torch.zeros_like(x[0])
        self.trees = [torchsde.BrownianTree(self.low, w0, self.high, entropy=seed) for seed in seeds]

    def __call__(self, sigma: float, sigma_next: float) -> torch.Tensor:
        """`sigma`, `sigma_next`: host floats (the order is decided on them, not on the device)."""
        sign = self.sign
        if sigma > sigma_next:
            sigma, sigma_next, sign = sigma_next, sigma, -sign
        t0, t1 = float(np.float32(sigma)), float(np.float32(sigma_next))  # the float32 times k-diffusion queries
        w = torch.stack([tree(t0, t1) for tree in self.trees]) * sign
        return w / math.sqrt(t1 - t0)


def lcm(model: Model, x, sigmas, ex: Extras):
    """Latent consistency: jump to the model's clean estimate, then re-noise to the next sigma with the image's
    own noise (the LCM boundary scaling is in the model, see sigmas.LcmSchedule)."""
    levels = _host(sigmas)
    for i in range(len(sigmas) - 1):
        x = model(x, sigmas[i])
        ex.on_step(i, x)
        if levels[i + 1] > 0:
            x = x + sigmas[i + 1] * ex.noise()
    return x


# ---------------------------------------------------------------- Restart (Xu et al. 2023), A1111's own sampler


def _restart_pairs(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (sigma, sigma_next) steps A1111's Restart takes. From 20 steps it spends some on going back up: the
    main descent becomes a shorter Karras schedule, and on reaching the sigma nearest 0.1 it climbs to the one
    nearest 2 and descends a Karras ladder again, once (9 steps) or from 36 steps twice (steps // 4 each)."""
    steps = len(sigmas) - 1
    if steps < 20:
        return list(zip(sigmas[:-1], sigmas[1:], strict=True))
    ladder_steps, times = (steps // 4, 2) if steps >= 36 else (9, 1)
    main = karras_between(steps - ladder_steps * times, sigmas[-2].item(), sigmas[0].item()).to(sigmas.device)
    low, high = int((main - 0.1).abs().argmin()), int((main - 2.0).abs().argmin())
    pairs = list(zip(main[:low], main[1 : low + 1], strict=True))
    if high < low:
        ladder = karras_between(ladder_steps + 1, main[low].item(), main[high].item()).to(sigmas.device)[:-1]
        pairs += list(zip(ladder[:-1], ladder[1:], strict=True)) * times
    return pairs + list(zip(main[low:-1], main[low + 1 :], strict=True))


def restart(model: Model, x, sigmas, ex: Extras):
    """Heun steps (Euler into sigma 0); wherever a step starts above where the last one ended, fresh noise
    from the image's generator lifts x to that sigma first."""
    last = None
    pairs = _restart_pairs(sigmas)
    host = torch.stack([torch.stack(pair) for pair in pairs]).tolist() if pairs else []  # read once
    for i, ((sigma, sigma_next), (level, level_next)) in enumerate(zip(pairs, host, strict=True)):
        if last is not None and last[1] < level:
            x = x + ex.noise() * ex.s_noise * (sigma**2 - last[0] ** 2) ** 0.5
        denoised = model(x, sigma)
        ex.on_step(i, x)
        x = _heun_step(model, x, sigma, sigma_next, denoised, level_next == 0)
        last = (sigma_next, level_next)
    return x


# ---------------------------------------------------------------- DPM-Solver fast / adaptive (Lu et al. 2022)
# They step in t = -log(sigma) between sigma_max and sigma_min on their own grid (fast: NFE-based orders;
# adaptive: an error-controlled step size), and take A1111's ancestral eta.


class _DpmSolver:
    def __init__(self, model: Model):
        self.model = model

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x, t):
        if key not in cache:
            cache[key] = (x - self.model(x, self.sigma(t))) / self.sigma(t)
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x, t, t_next, cache, r1=0.5):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = x - self.sigma(s2) * (r2 * h).expm1() * eps \
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def ancestral(self, t, t_next, t_end, eta):
        """(t to step to, noise scale) with eta; (t_next, 0) without."""
        if not eta:
            return t_next, 0.0
        down, _ = _ancestral_split(self.sigma(t), self.sigma(t_next), eta)
        t_down = torch.minimum(t_end, -down.log())
        return t_down, (self.sigma(t_next) ** 2 - self.sigma(t_down) ** 2) ** 0.5


def dpm_fast(model: Model, x, sigma_min: float, sigma_max: float, steps: int, ex: Extras):
    solver = _DpmSolver(model)
    t_start, t_end = -torch.tensor(sigma_max).log(), -torch.tensor(sigma_min).log()
    m = steps // 3 + 1
    ts = torch.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if steps % 3 == 0 else [3] * (m - 1) + [steps % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        t_step, noise_scale = solver.ancestral(t, t_next, t_end, ex.eta)
        solver.eps(cache, "eps", x, t)
        ex.on_step(i, x)
        x = (solver.step_1, solver.step_2, solver.step_3)[order - 1](x, t, t_step, cache)
        x = x + noise_scale * ex.s_noise * ex.noise()
    return x


def dpm_adaptive(model: Model, x, sigma_min: float, sigma_max: float, steps: int, ex: Extras, order: int = 3,
                 rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, accept_safety: float = 0.81):
    """Adaptive DPM-Solver-23 with k-diffusion's step-size controller at its defaults (purely integral:
    h *= limiter(1/error ** (1/order))). `steps` is unused: the error decides how many steps run."""
    solver = _DpmSolver(model)
    s, t_end = -torch.tensor(sigma_max).log(), -torch.tensor(sigma_min).log()
    h, power = h_init, 1 / (1.5 if ex.eta else order)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    x_prev, tries = x, 0
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + h)
        t_step, noise_scale = solver.ancestral(s, t, t_end, ex.eta)
        solver.eps(cache, "eps", x, s)
        x_low = solver.step_2(x, s, t_step, cache, r1=1 / 3)
        x_high = solver.step_3(x, s, t_step, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        factor = 1 + math.atan((1 / (float(error) + 1e-8)) ** power - 1)
        if factor >= accept_safety:
            x_prev = x_low
            x = x_high + noise_scale * ex.s_noise * ex.noise()
            s = t
        h *= factor
        ex.on_step(tries, x)
        tries += 1
    return x
