"""Running one batch's sampler, as A1111 does: k-diffusion samplers step through sigmas over a denoiser that
turns the UNet's guided output into a denoised estimate; A1111's DDIM, DDIM CFG++, PLMS and UniPC step through
DDPM timesteps on epsilon (timestep_samplers.py).
txt2img starts from noise; img2img from the picture's latents noised to where the shortened schedule starts;
inpainting holds what is outside the mask."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
import dataclasses
from dataclasses import dataclass

import torch

from backend.generation import kdiffusion, loop, timestep_samplers
from backend.generation.noise import ImageNoise
from backend.generation.requests import GenerationRequest, exact_steps_schedule
from backend.generation.token_merging import token_merging
from backend.generation.sigmas import DiscreteSchedule, LcmSchedule, SigmaRange, default_alphas_cumprod, sigmas_for
from backend.loading.loader import LoadedModel
from backend.samplers import ResolvedSampler


@dataclass
class Start:
    """Where sampling starts: from noise (txt2img), or from `init` latents at `strength` (img2img); `keep` is
    the latent mask of what stays the picture (1 = keep), for inpainting with a regular model."""

    init: torch.Tensor | None = None
    strength: float = 1.0
    keep: torch.Tensor | None = None
    total_steps: int | None = None  # hires fix: a schedule of this many steps ...
    run_steps: int | None = None  # ... of which the last this many run (else the strength decides)
    extra_noise: float = 0.0  # A1111's img2img_extra_noise: more of the same noise on the starting latents

    @classmethod
    def img2img(cls, init: torch.Tensor, req: GenerationRequest, strength: float,
                keep: torch.Tensor | None = None) -> Start:
        """img2img's start: with A1111's img2img_fix_steps the requested steps run, of a longer schedule."""
        fixed = req.img2img_fix_steps and strength > 0
        total, run = exact_steps_schedule(req.steps, strength) if fixed else (None, None)
        return cls(init, strength, keep, total_steps=total, run_steps=run, extra_noise=req.img2img_extra_noise)

    def steps(self, requested: int) -> tuple[int, int]:
        """(steps in the schedule, steps that run) for an img2img start."""
        if self.total_steps is not None:
            return self.total_steps, self.run_steps
        return requested, int(min(self.strength, 0.999) * requested) + 1

    def on(self, device: torch.device) -> Start:
        """This start with its picture and mask as float32 on `device`."""
        return dataclasses.replace(self, init=self.init.to(device, torch.float32),
                                   keep=None if self.keep is None else self.keep.to(device, torch.float32))

    def hold(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with the original put back where the mask keeps it."""
        return x * (1 - self.keep) + self.init * self.keep


@dataclass
class Refiner:
    """A1111's refiner switch: before each model call the completed ratio is (999 - t) / 1000, t being the DDPM
    timestep nearest the sigma (timestep samplers: the timestep itself, truncated); at the first call whose
    ratio reaches `switch_at` (None: the first call), `take_over()` loads the refiner and returns its guided
    denoiser and the model. The latent and the sigma schedule go on; nothing is re-noised."""

    switch_at: float | None
    take_over: Callable[[], tuple[loop.Denoiser, LoadedModel]]
    switched: bool = False

    def due(self, timestep: int) -> bool:
        if self.switched:
            return False
        return self.switch_at is None or (999 - timestep) / 1000 >= self.switch_at


class SigmaDenoiser:
    """(x, sigma) -> denoised x: scales the input, calls the guided UNet at sigma's fractional timestep, and
    turns its epsilon or v prediction into the denoised estimate; inpainting blends the original back in."""

    def __init__(self, denoiser: loop.Denoiser, schedule: DiscreteSchedule, prediction_type: str,
                 dtype: torch.dtype, start: Start, refiner: Refiner | None = None):
        self.denoiser, self.schedule, self.v = denoiser, schedule, prediction_type == "v_prediction"
        self.dtype, self.start, self.calls, self.refiner = dtype, start, 0, refiner
        self.last_denoised: torch.Tensor | None = None  # what an interrupted image is made of (A1111's last_latent)

    def _maybe_refine(self, sigma: torch.Tensor) -> None:
        """Only while a refiner waits is the sigma read on the host (one sync per call)."""
        if self.refiner is None or self.refiner.switched:
            return
        timestep = int(torch.argmin((self.schedule.sigmas.cpu() - float(sigma.max())).abs()))
        if self.refiner.due(timestep):
            self.denoiser, model = self.refiner.take_over()
            self.refiner.switched = True
            self.v, self.dtype = model.prediction_type == "v_prediction", model.dtype

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self._maybe_refine(sigma)
        c_in = 1 / (sigma**2 + 1) ** 0.5
        t = self.schedule.sigma_to_t(sigma.reshape(1)).expand(x.shape[0]).to(x.device)
        # the sigma stays a tensor: it is only read (a device sync) when NGMS is on
        out = self.denoiser((x * c_in).to(self.dtype), t, self.calls, sigma.reshape(-1)[0]).float()
        self.calls += 1  # prompt schedules count model calls, as A1111's denoiser does
        if self.v:
            denoised = x / (sigma**2 + 1) - out * sigma / (sigma**2 + 1) ** 0.5
        else:
            denoised = x - out * sigma
        denoised = self.schedule.boundary(x, sigma, denoised)
        if self.start.keep is not None:
            denoised = self.start.hold(denoised)
        self.last_denoised = denoised
        return denoised


def sample(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
           rng: ImageNoise, noise: torch.Tensor, denoiser: loop.Denoiser, hooks, start: Start,
           refiner: Refiner | None = None) -> torch.Tensor:
    """The batch's final latents (float32). An interrupt is honoured between the UNet's blocks, so even the
    largest allowed step (a 2048x2048 batch of 8 on a CPU) is not waited for."""
    with interruptible(model, hooks.check_interrupt), token_merging(model.unet, req.tome_ratio()):
        return _sample(model, req, sampler, seeds, rng, noise, denoiser, hooks, start, refiner)


@contextlib.contextmanager
def interruptible(model: LoadedModel, check_interrupt):
    """Call `check_interrupt` before each of the UNet's down, mid and up blocks while sampling (a flag test: no
    device synchronisation). Not under torch.compile, whose graph the hooks would break."""
    measures = model.applied_measures
    blocks = [] if measures is not None and measures.compile else \
        [*getattr(model.unet, "down_blocks", []), getattr(model.unet, "mid_block", None),
         *getattr(model.unet, "up_blocks", [])]
    with interruptible_blocks(blocks, check_interrupt):
        yield


@contextlib.contextmanager
def interruptible_blocks(blocks: list, check_interrupt):
    """Call `check_interrupt` before each of `blocks` runs (None entries are skipped)."""
    handles = [block.register_forward_pre_hook(lambda module, args: check_interrupt())
               for block in blocks if block is not None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def decoder_blocks(model: LoadedModel) -> list:
    """The VAE decoder's mid and up blocks: where a long decode (a large batch on a CPU) can stop."""
    decoder = getattr(model.vae, "decoder", None)
    return [getattr(decoder, "mid_block", None), *getattr(decoder, "up_blocks", [])] if decoder is not None else []


def _sample(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, seeds: list[int],
            rng: ImageNoise, noise: torch.Tensor, denoiser: loop.Denoiser, hooks, start: Start,
            refiner: Refiner | None) -> torch.Tensor:
    if sampler.sampler.timestep_function:
        return _sample_a1111_timesteps(model, req, sampler, rng, noise, denoiser, hooks, start, refiner)
    device = model.execution_device
    schedule = (LcmSchedule if sampler.sampler.k_function == "lcm" else DiscreteSchedule)(model.alphas_cumprod)
    steps, run_steps = (req.steps, req.steps) if start.init is None else start.steps(req.steps)
    limits = SigmaRange(req.schedule_sigma_min, req.schedule_sigma_max, req.schedule_rho)
    sigmas = sigmas_for(schedule, sampler.schedule, steps, _discards_penultimate(req, sampler), limits).to(device)
    noise = noise.to(device, torch.float32)
    if start.init is None:  # A1111's sgm_noise_multiplier scales txt2img's noise to SGM's (1 + sigma^2) ** 0.5
        run, x = sigmas, noise * ((1 + sigmas[0] ** 2) ** 0.5 if req.sgm_noise_multiplier else sigmas[0])
    else:
        start = start.on(device)
        run = sigmas[steps - run_steps :]  # A1111: sigmas[steps - t_enc - 1:]
        x = start.init + noise * run[0]
        if start.extra_noise > 0:
            x = x + noise * start.extra_noise
    launched = steps if start.init is None else run_steps
    denoiser = _launched(denoiser, launched, sampler)
    model_fn = SigmaDenoiser(denoiser, schedule, model.prediction_type, model.dtype, start, refiner)
    control_steps = _begin_control(denoiser, launched)

    def on_step(i: int, x: torch.Tensor) -> None:  # the step's denoised estimate: a preview, or what an interrupt keeps
        control_steps(i)
        hooks.report_step(min(i + 1, len(run) - 1), len(run) - 1, model_fn.last_denoised)

    extras = kdiffusion.Extras(
        on_step=on_step,
        noise=lambda: rng.next(tuple(x.shape[1:])).to(device),
        brownian=kdiffusion.BrownianNoise(x, sigmas.cpu(), seeds) if sampler.sampler.noise == "brownian" else None,
        eta=req.eta_for(ddim=False), s_noise=req.s_noise, s_churn=req.s_churn, s_tmin=req.s_tmin,
        s_tmax=req.s_tmax or float("inf"))
    function = getattr(kdiffusion, sampler.sampler.k_function)
    with torch.no_grad():
        if sampler.sampler.interval:  # A1111: the model's whole sigma range for txt2img, the run's for img2img
            low, high = (schedule.sigma_min, schedule.sigma_max) if start.init is None else (run[-2], run[0])
            x = function(model_fn, x, float(low), float(high), len(run) - 1, extras)
        else:
            x = function(model_fn, x, run, extras)
    if start.keep is not None:
        x = start.hold(x)
    return x.float()


class EpsDenoiser:
    """(x, timestep) -> (guided epsilon, unconditional epsilon) for A1111's timestep samplers (UniPC's timesteps
    are fractional). Inpainting with a regular model shows the UNet the original where it is kept (A1111's
    mask-before-denoising)."""

    def __init__(self, denoiser: loop.Denoiser, alphas_cumprod: torch.Tensor, prediction_type: str,
                 dtype: torch.dtype, start: Start, refiner: Refiner | None = None):
        self.denoiser, self.v = denoiser, prediction_type == "v_prediction"
        self.alphas_cumprod = alphas_cumprod.tolist()  # read once, on the host
        self.dtype, self.start, self.calls, self.refiner = dtype, start, 0, refiner
        self.last_denoised: torch.Tensor | None = None  # the x0 estimate of the last call (A1111's pred_x0)

    def __call__(self, x: torch.Tensor, timestep: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.refiner is not None and self.refiner.due(int(timestep)):
            self.denoiser, model = self.refiner.take_over()
            self.refiner.switched = True
            self.v, self.dtype = model.prediction_type == "v_prediction", model.dtype
        if self.start.keep is not None:
            x = self.start.hold(x)
        t = torch.full((x.shape[0],), float(timestep), device=x.device)
        guided, uncond = (out.float() for out in self.denoiser.guide(x.to(self.dtype), t, self.calls, float(timestep)))
        self.calls += 1
        a = self.alphas_cumprod[int(timestep)]  # A1111 truncates a fractional timestep
        if self.v:  # epsilon = sqrt(a) v + sqrt(1 - a) x, for both (linear in the output)
            guided, uncond = (a**0.5 * out + (1 - a) ** 0.5 * x for out in (guided, uncond))
        x0 = (x - (1 - a) ** 0.5 * guided) / a**0.5
        self.last_denoised = x0 if self.start.keep is None else self.start.hold(x0)
        return guided, uncond


def _discards_penultimate(req: GenerationRequest, sampler: ResolvedSampler) -> bool:
    """The sampler's own choice, or A1111's always_discard_next_to_last_sigma for all."""
    return sampler.sampler.discard_penultimate or req.discard_penultimate_sigma


def _launched(denoiser: loop.Denoiser, steps: int, sampler: ResolvedSampler) -> loop.Denoiser:
    """The denoiser knowing the pass's model calls as A1111 counts them (CFGDenoiser.total_steps): the steps
    launched, twice for samplers that call the model twice a step."""
    return dataclasses.replace(denoiser, launched_calls=steps * (2 if sampler.sampler.second_order else 1))


def _begin_control(denoiser: loop.Denoiser, total_steps: int) -> Callable[[int], None]:
    """ControlNet's guidance window counts the pass's steps as A1111 launches them (img2img and hires: t_enc
    + 1) and the step the sampler last reported done; returns what each step reports to."""
    if denoiser.control is None:
        return lambda step: None
    denoiser.control.begin(total_steps)
    return denoiser.control.step_done


def _cfgpp(denoiser: loop.Denoiser, model: LoadedModel) -> tuple[loop.Denoiser, LoadedModel]:
    return dataclasses.replace(denoiser, cfg_scale=denoiser.cfg_scale / 12.5), model


def _sample_a1111_timesteps(model: LoadedModel, req: GenerationRequest, sampler: ResolvedSampler, rng: ImageNoise,
                            noise: torch.Tensor, denoiser: loop.Denoiser, hooks, start: Start,
                            refiner: Refiner | None) -> torch.Tensor:
    """DDIM, DDIM CFG++, PLMS and UniPC as A1111 runs them. img2img noises the picture to timestep t_enc but
    starts the loop one timestep lower, as A1111 does."""
    device = model.execution_device
    name = sampler.sampler.timestep_function
    alphas_cumprod = model.alphas_cumprod if model.alphas_cumprod is not None else default_alphas_cumprod()
    noise = noise.to(device, torch.float32)
    steps, run_steps = (req.steps, None) if start.init is None else start.steps(req.steps)
    timesteps = timestep_samplers.a1111_timesteps(steps, _discards_penultimate(req, sampler))
    if start.init is None:
        x = noise
    else:
        t_enc = run_steps - 1
        a = alphas_cumprod[timesteps[t_enc]]
        start = start.on(device)
        x = start.init * a**0.5 + noise * (1 - a) ** 0.5
        if start.extra_noise > 0:  # A1111 scales it into the timestep samplers' space
            x = x + noise * start.extra_noise * a**0.5
        timesteps = timesteps[:t_enc]
    if name == "ddim_cfgpp":
        denoiser = dataclasses.replace(denoiser, cfg_scale=denoiser.cfg_scale / 12.5)
        if refiner is not None:  # the refiner's guidance is scaled the same way
            take_over = refiner.take_over
            refiner = dataclasses.replace(refiner, take_over=lambda: _cfgpp(*take_over()))
    launched = steps if start.init is None else run_steps
    denoiser = _launched(denoiser, launched, sampler)
    eps_model = EpsDenoiser(denoiser, alphas_cumprod, model.prediction_type, model.dtype, start, refiner)
    total = len(timesteps) if name == "unipc" else len(timesteps) - 1  # DDIM and PLMS skip the first timestep
    control_steps = _begin_control(denoiser, launched)

    def on_step(i: int, x: torch.Tensor) -> None:
        control_steps(i)
        hooks.report_step(min(i + 1, total), total, eps_model.last_denoised)
    with torch.no_grad():
        if name == "plms":
            x = timestep_samplers.plms(eps_model, x, timesteps, alphas_cumprod, on_step)
        elif name == "unipc":
            x = timestep_samplers.unipc(eps_model, x, timesteps, alphas_cumprod, on_step, req.unipc,
                                        img2img=start.init is not None)
        else:
            x = timestep_samplers.ddim(eps_model, x, timesteps, alphas_cumprod,
                                       lambda: rng.next(tuple(x.shape[1:])).to(device), on_step,
                                       eta=req.eta_for(ddim=True), cfgpp=name == "ddim_cfgpp")
    if start.keep is not None:
        x = start.hold(x)
    return x.float()
