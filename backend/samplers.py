"""A1111 sampler and schedule-type names, mapped to the code that runs each sampler."""

from __future__ import annotations

from dataclasses import dataclass

from backend.errors import InvalidRequest


# the schedules that take A1111's rho option (its schedulers with a default_rho)
RHO_SCHEDULES = ("Karras",)

@dataclass(frozen=True)
class Sampler:
    """An A1111 sampler. k-diffusion samplers (`k_function`, in backend/generation/kdiffusion.py) step
    through sigmas; DDIM, DDIM CFG++, PLMS and UniPC (`timestep_function`, in
    backend/generation/timestep_samplers.py) step through A1111's DDPM timesteps."""

    name: str
    k_function: str | None = None
    timestep_function: str | None = None
    default_schedule: str = "Uniform"
    aliases: tuple[str, ...] = ()
    noise: str = ""  # "ancestral": extra noise from each image's generator; "brownian": a seeded Brownian tree
    discard_penultimate: bool = False  # drop the next-to-last sigma (DPM2, DPM2 a, DPM++ 3M SDE)

    @property
    def ancestral(self) -> bool:
        """Adds fresh noise every step from the image's continuing generator (ENSD reseeds it)."""
        return self.noise == "ancestral"

    @property
    def second_order(self) -> bool:
        """Calls the model twice per step (A1111 counts prompt-schedule steps per call)."""
        return self.k_function in ("heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                                  "restart")

    @property
    def interval(self) -> bool:
        """Steps on its own grid between two sigmas (DPM fast, DPM adaptive) instead of through a schedule."""
        return self.k_function in ("dpm_fast", "dpm_adaptive")

    @property
    def uses_ddim_eta(self) -> bool:
        """Takes A1111's eta_ddim option (infotext "Eta DDIM") rather than eta_ancestral."""
        return self.timestep_function in ("ddim", "ddim_cfgpp")

    @property
    def uses_eta(self) -> bool:
        return bool(self.noise) or self.uses_ddim_eta

    def a1111_options(self) -> dict:
        """The `options` A1111's GET /sdapi/v1/samplers lists for this sampler."""
        options: dict = {}
        if self.k_function and self.default_schedule != "Uniform":
            options["scheduler"] = SCHEDULES[self.default_schedule]
        if self.discard_penultimate:
            options["discard_next_to_last_sigma"] = True
        if self.noise == "brownian":
            options["brownian_noise"] = True
        if self.noise == "ancestral":
            options["uses_ensd"] = True
        if self.second_order:
            options["second_order"] = True
        if self.k_function == "dpmpp_2m_sde_heun":
            options["solver_type"] = "heun"
        if self.uses_ddim_eta:
            options["default_eta_is_0"] = True
        return options


SAMPLERS = [
    Sampler("DPM++ 2M", "dpmpp_2m", default_schedule="Karras", aliases=("k_dpmpp_2m",)),
    Sampler("DPM++ SDE", "dpmpp_sde", default_schedule="Karras", aliases=("k_dpmpp_sde",), noise="brownian"),
    Sampler("DPM++ 2M SDE", "dpmpp_2m_sde", default_schedule="Exponential", aliases=("k_dpmpp_2m_sde",),
            noise="brownian"),
    Sampler("DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun", default_schedule="Exponential",
            aliases=("k_dpmpp_2m_sde_heun",), noise="brownian"),
    Sampler("DPM++ 2S a", "dpmpp_2s_ancestral", default_schedule="Karras", aliases=("k_dpmpp_2s_a",),
            noise="ancestral"),
    Sampler("DPM++ 3M SDE", "dpmpp_3m_sde", default_schedule="Exponential", aliases=("k_dpmpp_3m_sde",),
            noise="brownian", discard_penultimate=True),
    Sampler("Euler a", "euler_ancestral", aliases=("k_euler_a", "k_euler_ancestral"), noise="ancestral"),
    Sampler("Euler", "euler", aliases=("k_euler",)),
    Sampler("LMS", "lms", aliases=("k_lms",)),
    Sampler("Heun", "heun", aliases=("k_heun",)),
    Sampler("DPM2", "dpm_2", default_schedule="Karras", aliases=("k_dpm_2",), discard_penultimate=True),
    Sampler("DPM2 a", "dpm_2_ancestral", default_schedule="Karras", aliases=("k_dpm_2_a",), noise="ancestral",
            discard_penultimate=True),
    Sampler("DPM fast", "dpm_fast", aliases=("k_dpm_fast",), noise="ancestral"),
    Sampler("DPM adaptive", "dpm_adaptive", aliases=("k_dpm_ad",), noise="ancestral"),
    Sampler("Restart", "restart", default_schedule="Karras", aliases=("restart",)),
    Sampler("DDIM", timestep_function="ddim", aliases=("ddim",)),
    Sampler("DDIM CFG++", timestep_function="ddim_cfgpp", aliases=("ddim_cfgpp",)),
    Sampler("PLMS", timestep_function="plms", aliases=("plms",)),
    Sampler("UniPC", timestep_function="unipc", aliases=("unipc",)),
    Sampler("LCM", "lcm", aliases=("k_lcm",)),
]

# Schedule type label -> A1111's internal name (the sigmas are in backend/generation/sigmas.py).
SCHEDULES = {
    "Automatic": "automatic",
    "Uniform": "uniform",
    "Karras": "karras",
    "Exponential": "exponential",
    "SGM Uniform": "sgm_uniform",
}


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
    for label, internal in SCHEDULES.items():
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
    """k-diffusion samplers take every schedule type; A1111's timestep samplers have their own timesteps."""
    return sampler.k_function is not None or schedule_label == "Uniform"


def infotext_schedule(sampler: Sampler, chosen: str | None) -> str:
    """A1111's `Schedule type`: k-diffusion samplers write the schedule they used, except "Automatic" on a
    sampler without a schedule of its own (Euler, ...), which stays "Automatic"; DDIM, PLMS and UniPC use no
    sigma schedule and write the choice as it was made."""
    label = find_schedule(chosen)
    if sampler.k_function is None or label != "Automatic":
        return label
    return "Automatic" if sampler.default_schedule == "Uniform" else sampler.default_schedule


def hires_infotext_schedule(first: Sampler, first_choice: str | None, second: Sampler,
                            second_choice: str | None) -> str | None:
    """A1111's `Hires schedule type`: the second pass's schedule when it differs from the one the first pass
    wrote (a k-diffusion schedule, not "Automatic")."""
    if second.k_function is None:
        return None
    written = infotext_schedule(first, first_choice) if first.k_function else None
    label = infotext_schedule(second, second_choice)
    return None if label in ("Automatic", written) else label


UNIPC_VARIANTS = ("bh1", "bh2")  # A1111's vary_coeff is not implemented
UNIPC_SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


@dataclass(frozen=True)
class UniPCSettings:
    """A1111's uni_pc_* options (its defaults)."""

    variant: str = "bh1"  # bh1 | bh2: the B(h) of the UniPC paper, h or e^h - 1
    skip_type: str = "time_uniform"  # time_uniform | time_quadratic | logSNR: how the time grid is spaced
    order: int = 3
    lower_order_final: bool = True  # lower the order over the last steps
