"""A1111 sampler and schedule-type names, mapped to diffusers schedulers built from the model's own config."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from backend.errors import InvalidRequest


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler_class: type
    options: dict = field(default_factory=dict)
    default_schedule: str = "Uniform"
    aliases: tuple[str, ...] = ()

    @property
    def ancestral(self) -> bool:
        """Adds fresh noise every step (from the image's continuing generator; ENSD reseeds it)."""
        return self.name in ("Euler a", "DPM2 a")


SAMPLERS = [
    Sampler("DPM++ 2M", DPMSolverMultistepScheduler, {}, "Karras", ("k_dpmpp_2m",)),
    Sampler("DPM++ SDE", DPMSolverSinglestepScheduler, {}, "Karras", ("k_dpmpp_sde",)),
    Sampler("DPM++ 2M SDE", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, "Exponential",
            ("k_dpmpp_2m_sde",)),
    Sampler("Euler a", EulerAncestralDiscreteScheduler, {}, "Uniform", ("k_euler_a", "k_euler_ancestral")),
    Sampler("Euler", EulerDiscreteScheduler, {}, "Uniform", ("k_euler",)),
    Sampler("LMS", LMSDiscreteScheduler, {}, "Uniform", ("k_lms",)),
    Sampler("Heun", HeunDiscreteScheduler, {}, "Uniform", ("k_heun",)),
    Sampler("DPM2", KDPM2DiscreteScheduler, {}, "Karras", ("k_dpm_2",)),
    Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler, {}, "Karras", ("k_dpm_2_a",)),
    Sampler("DDIM", DDIMScheduler, {}, "Uniform", ("ddim",)),
    Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}, "Uniform", ("plms",)),
    Sampler("UniPC", UniPCMultistepScheduler, {}, "Uniform", ("unipc",)),
    Sampler("LCM", LCMScheduler, {}, "Uniform", ("k_lcm",)),
]

# Schedule type label -> (A1111 internal name, scheduler constructor overrides).
SCHEDULES = {
    "Automatic": ("automatic", {}),
    "Uniform": ("uniform", {}),
    "Karras": ("karras", {"use_karras_sigmas": True}),
    "Exponential": ("exponential", {"use_exponential_sigmas": True}),
    "SGM Uniform": ("sgm_uniform", {"timestep_spacing": "trailing"}),
}


def scheduler_base_config(prediction_type: str) -> dict:
    """The noise schedule all SD 1.x / 2.x / XL checkpoints were trained with (they do not store it)."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type=prediction_type, steps_offset=1, timestep_spacing="leading", clip_sample=False,
                set_alpha_to_one=False, skip_prk_steps=True)


def find_sampler(name: str) -> Sampler:
    wanted = name.strip().lower()
    for sampler in SAMPLERS:
        if wanted == sampler.name.lower() or wanted in sampler.aliases:
            return sampler
    raise InvalidRequest("sampler_name", f"unknown sampler '{name}'; choose one of {', '.join(s.name for s in SAMPLERS)}")


def find_schedule(name: str | None) -> str:
    if not name:
        return "Automatic"
    wanted = name.strip().lower()
    for label, (internal, _) in SCHEDULES.items():
        if wanted in (label.lower(), internal):
            return label
    raise InvalidRequest("scheduler", f"unknown schedule type '{name}'; choose one of {', '.join(SCHEDULES)}")


def split_legacy_name(sampler_name: str, schedule: str | None) -> tuple[str, str | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'), as A1111 still accepts the old combined names."""
    for label in sorted(SCHEDULES, key=len, reverse=True):
        suffix = " " + label.lower()
        if sampler_name.lower().endswith(suffix) and sampler_name[: -len(suffix)].strip():
            base = sampler_name[: -len(suffix)].strip()
            if _is_sampler(base):
                return base, schedule if schedule and schedule != "Automatic" else label
    return sampler_name, schedule


def _is_sampler(name: str) -> bool:
    try:
        find_sampler(name)
        return True
    except InvalidRequest:
        return False


@dataclass(frozen=True)
class ResolvedSampler:
    sampler: Sampler
    schedule: str  # the label actually used, never "Automatic"

    def make_scheduler(self, base_config: dict):
        overrides = dict(self.sampler.options)
        overrides.update(SCHEDULES[self.schedule][1])
        return self.sampler.scheduler_class.from_config(base_config, **overrides)


def resolve(sampler_name: str, schedule: str | None = None) -> ResolvedSampler:
    """Names as users type them -> the sampler and the schedule type that will really be used."""
    sampler_name, schedule = split_legacy_name(sampler_name, schedule)
    sampler = find_sampler(sampler_name)
    label = find_schedule(schedule)
    if label == "Automatic":
        label = sampler.default_schedule
    if not _supports(sampler, label):
        label = "Uniform"  # e.g. DDIM or PLMS with Karras: they have no sigma schedule to reshape
    return ResolvedSampler(sampler, label)


def _supports(sampler: Sampler, schedule_label: str) -> bool:
    params = inspect.signature(sampler.scheduler_class.__init__).parameters
    return all(key in params for key in SCHEDULES[schedule_label][1])
