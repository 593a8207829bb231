"""A1111's Loopback (img2img): each result is the next loop's picture, the seed counts up by one per loop, and the
denoising strength moves from the request's to the final one along the chosen curve (Aggressive: sine,
Linear, Lazy: 1 - cosine of the loop's progress). With a batch count, each batch starts again from the
request's picture and strength (the seed goes on counting); with several batches only each batch's last
picture is kept. After the first loop, inpainting's masked content is "original"."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from backend.errors import InvalidRequest
from backend.generation.requests import MaskedContent
from backend.grid import make_grid
from backend.scripts.base import Catalog, ScriptArg, ScriptChecks, ScriptOutput, ScriptTools, arg

TITLE = "Loopback"
CURVES = ("Aggressive", "Linear", "Lazy")
INTERROGATORS = ("None", "CLIP", "DeepBooru")


@dataclass(frozen=True)
class LoopbackSettings:
    loops: int = 4
    final_denoising_strength: float = 0.5
    curve: str = "Linear"


def arguments(catalog: Catalog) -> list[ScriptArg]:
    return [ScriptArg("loops", "slider", "Loops", 4, 1, 32, 1),
            ScriptArg("final_denoising_strength", "slider", "Final denoising strength", 0.5, 0.0, 1.0, 0.01),
            ScriptArg("denoising_curve", "dropdown_value", "Denoising strength curve", "Linear", choices=CURVES),
            ScriptArg("append_interrogation", "dropdown_value", "Append interrogated prompt at each iteration",
                      "None", choices=INTERROGATORS)]


def settings(args: list, catalog: Catalog) -> LoopbackSettings:
    spec = arguments(catalog)
    loops = arg(args, spec, "loops", int)
    final = arg(args, spec, "final_denoising_strength", float)
    curve = arg(args, spec, "denoising_curve", str)
    interrogation = arg(args, spec, "append_interrogation", str)
    if not 1 <= loops <= 32:
        raise InvalidRequest("script_args", f"loops must be 1..32, got {loops}")
    if not 0.0 <= final <= 1.0:
        raise InvalidRequest("script_args", f"final denoising strength must be 0..1, got {final}")
    if curve not in CURVES:
        raise InvalidRequest("script_args", f"denoising curve must be one of {', '.join(CURVES)}, got {curve!r}")
    if interrogation != "None":
        raise InvalidRequest("script_args", f"appending an interrogated prompt ({interrogation}) needs CLIP "
                                            "interrogator or DeepBooru weights, which are not available here")
    return LoopbackSettings(loops, final, curve)


def strength(initial: float, settings: LoopbackSettings, loop: int) -> float:
    """The denoising strength of loop `loop` (0 = the request's)."""
    if settings.loops == 1:
        return initial
    progress = loop / (settings.loops - 1)
    shape = {"Aggressive": math.sin(progress * math.pi * 0.5),
             "Lazy": 1 - math.cos(progress * math.pi * 0.5)}.get(settings.curve, progress)
    return initial + (settings.final_denoising_strength - initial) * shape


def check(req, settings: LoopbackSettings, checks: ScriptChecks) -> None:
    if settings.loops * req.n_iter > checks.max_jobs:
        raise InvalidRequest("script_args", f"{TITLE}: {settings.loops} loops x {req.n_iter} batches are more "
                                            f"than the {checks.max_jobs} jobs one request may make")
    checks.prepare(_loop_request(req, settings, req.init_image, req.seed, req.denoising_strength, first=True))


def _loop_request(req, settings: LoopbackSettings, picture, seed: int, denoising: float, first: bool):
    params = (("Final denoising strength", settings.final_denoising_strength), ("Denoising curve", settings.curve))
    changes = dict(script=None, batch_size=1, n_iter=1, init_image=picture, seed=seed, denoising_strength=denoising,
                   extra_params=req.extra_params + params)
    if not first:
        changes["inpainting_fill"] = MaskedContent.ORIGINAL
    return dataclasses.replace(req, **changes)


def run(req, settings: LoopbackSettings, tools: ScriptTools) -> ScriptOutput:
    out = ScriptOutput(saved=True)
    history, seed, total = [], req.seed, settings.loops * req.n_iter
    for batch in range(req.n_iter):
        picture, denoising, last = req.init_image, req.denoising_strength, None
        for loop in range(settings.loops):
            tools.count_job(batch * settings.loops + loop, total)
            tools.report(f"{TITLE}: iteration {loop + 1}/{settings.loops}, batch {batch + 1}/{req.n_iter}")
            result = tools.process(_loop_request(req, settings, picture, seed, denoising, first=loop == 0))
            if result.interrupted or not result.images or tools.interrupted():
                out.interrupted = True
                break
            out.infotext = out.infotext or result.infotexts[0]  # A1111 answers with the first loop's parameters
            out.template = out.template or result
            out.warnings += [w for w in result.warnings if w not in out.warnings]
            seed, denoising = result.seeds[0] + 1, strength(req.denoising_strength, settings, loop + 1)
            last = picture = result.images[0]
            if req.n_iter == 1:
                history.append((last, result.seeds[0]))
        if req.n_iter > 1 and last is not None and not out.interrupted:
            history.append((last, seed - 1))
        if out.interrupted:
            break
    out.images = [image for image, _ in history]
    out.seeds = [s for _, s in history]
    if len(history) > 1 and tools.return_grid:
        out.images.insert(0, make_grid(out.images, rows=1))
        out.seeds.insert(0, out.seeds[0])
        out.grids = 1
    return out
