"""What every script shares: the tools it is given, what it returns, and its argument parsing."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from backend.errors import InvalidRequest


@dataclass(frozen=True)
class Catalog:
    """What a script's controls offer on one tab: the names of what exists here (A1111's choices lists)."""

    tab: str = "img2img"  # txt2img | img2img
    upscalers: tuple[str, ...] = ()  # image upscalers, A1111's order (None, Lanczos, Nearest, models)
    hires_upscalers: tuple[str, ...] = ()  # latent modes, then the image upscalers
    samplers: tuple[str, ...] = ()
    schedulers: tuple[str, ...] = ()  # schedule type labels
    checkpoints: tuple[str, ...] = ()  # titles
    vaes: tuple[str, ...] = ()  # VAE names
    styles: tuple[str, ...] = ()


@dataclass
class ScriptTools:
    """What a script may use: run a request as its own job on the one loop (returns a GenerationResult; the
    request's styles are merged there), upscale a picture, say what it is doing (and stop here when the user
    interrupted), count its jobs for the progress bar (done, total), and write an infotext for a job's result
    with more parameters (A1111's extra_generation_params of a grid)."""

    process: Callable
    upscale: Callable[[Image.Image, str, float], Image.Image]
    report: Callable[[str], None] = lambda text: None
    count_job: Callable[[int, int], None] = lambda done, total: None
    infotext: Callable[[object, tuple], str] = lambda result, extra: ""
    interrupted: Callable[[], bool] = lambda: False
    return_grid: bool = True  # A1111's option: a batch's first picture is its grid
    save_named: Callable = lambda image, folder, stem, infotext: None  # into a folder, under a name


@dataclass
class ScriptOutput:
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    infotext: str = ""  # A1111 reports the first job's parameters for the whole result
    interrupted: bool = False
    infotexts: list[str] | None = None  # one per image (X/Y/Z plot); None: `infotext` for every image
    grids: int = 0  # the first `grids` images are grids: saved to the grids folder ...
    grid_name: str = "grid"  # ... under A1111's name for them
    saved: bool = False  # the jobs saved their own pictures: only the grids are left to save
    template: object | None = None  # one job's result: the model and sampler the answer's info names
    warnings: list[str] = field(default_factory=list)

    def texts(self) -> list[str]:
        return list(self.infotexts) if self.infotexts is not None else [self.infotext] * len(self.images)


@dataclass(frozen=True)
class ScriptArg:
    """One of a script's controls, in A1111's order: what GET /script-info reports and the UI builds.
    kind: "info" (text only), "slider", "radio" (one of `choices`), "checkboxes" (any of `choices`),
    "dropdown" (one of `choices`, given as its index), "dropdown_value" (one of `choices`, given as itself),
    "multiselect" (any of `choices`, filled by the UI), "text", "checkbox"."""

    key: str
    kind: str
    label: str | None
    value: object
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple | None = None

    def api(self) -> dict:
        """A1111's ScriptArg shape."""
        return {"label": self.label, "value": list(self.value) if isinstance(self.value, tuple) else self.value,
                "minimum": self.minimum, "maximum": self.maximum, "step": self.step,
                "choices": list(self.choices) if self.choices is not None else None}


def info(text: str) -> ScriptArg:
    return ScriptArg("info", "info", None, text)


@dataclass(frozen=True)
class SizeLimit:
    """What a script's check needs to refuse, before any work, a picture it would grow too large:
    `max_pixels`, and `upscale_peak(size, upscaler, scale)`, the largest picture an upscaler makes on the way."""

    max_pixels: int
    upscale_peak: Callable[[tuple[int, int], str, float], tuple[int, int]]

    def check(self, size: tuple[int, int], what: str) -> None:
        if size[0] * size[1] > self.max_pixels:
            raise InvalidRequest("script_args", f"{what} would be {size[0]}x{size[1]}, more than the configured "
                                                f"maximum of {self.max_pixels} pixels")


@dataclass(frozen=True)
class ScriptChecks:
    """What a script's check may use before the request is queued: the size limit, `prepare(request)` (the
    service's own checks of one of the script's jobs, which it returns ready to run), the largest number of jobs
    one request may make, and A1111's `img_max_size_mp` for a grid."""

    size: SizeLimit
    prepare: Callable = lambda req: req
    max_jobs: int = 1000
    grid_megapixels: int = 200


@dataclass(frozen=True)
class ScriptRun:
    """A chosen script and its settings (a dataclass of the script's module)."""

    title: str
    settings: object
    tab: str = "img2img"


def arg(args: list, spec: list[ScriptArg], key: str, cast):
    """The script argument `key` from A1111's positional `args`, or its default; a wrong type is a 422."""
    index = next(i for i, a in enumerate(spec) if a.key == key)
    if index >= len(args) or args[index] is None:
        return cast(spec[index].value)
    value = args[index]
    if cast in (int, float) and (isinstance(value, bool) or isinstance(value, float) and not math.isfinite(value)):
        raise InvalidRequest("script_args", f"argument {index} ({key}) must be a finite number, got {value!r}")
    try:
        return cast(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest("script_args", f"argument {index} ({key}) cannot be {value!r}") from None


def check_smaller_than_tile(what: str, value: int, req) -> None:
    """Tiles overlap by `value`, so it must be smaller than the tile (the request's width x height)."""
    if value >= min(req.width, req.height):
        raise InvalidRequest("script_args", f"{what} ({value}) must be smaller than the tile ({req.width}x{req.height}): "
                                            "the tiles overlap by that much")
