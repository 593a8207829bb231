"""A1111's Prompt matrix (txt2img and img2img): `a cat|red|in a hat` makes every combination of the parts after
the first (2^(n-1) prompts, the first part always in, at the start or the end), joined by ", " or " "; each is
a job with the request's seed (or seed + its index with "Random seeds"). The grid puts the first half of the
parts along the top and the rest down the side, inactive parts grey and struck through."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from backend.errors import BackendError, InvalidRequest
from backend.grid import GridText, annotate, make_grid
from backend.scripts.base import Catalog, ScriptArg, ScriptChecks, ScriptOutput, ScriptTools

TITLE = "Prompt matrix"
MAX_PARTS = 11  # 1024 combinations


@dataclass(frozen=True)
class MatrixSettings:
    put_at_start: bool = False
    different_seeds: bool = False
    prompt_type: str = "positive"
    delimiter: str = "comma"
    margin_size: int = 0


def arguments(catalog: Catalog) -> list[ScriptArg]:
    return [ScriptArg("put_at_start", "checkbox", "Put variable parts at start of prompt", False),
            ScriptArg("different_seeds", "checkbox", "Use different seed for each picture", False),
            ScriptArg("prompt_type", "radio", "Select prompt", "positive", choices=("positive", "negative")),
            ScriptArg("variations_delimiter", "radio", "Select joining char", "comma", choices=("comma", "space")),
            ScriptArg("margin_size", "slider", "Grid margins (px)", 0, 0, 500, 2)]


def settings(args: list, catalog: Catalog) -> MatrixSettings:
    given = list(args) + [False, False, "positive", "comma", 0][len(args):]
    start, different, kind, delimiter, margin = given[:5]
    for index, flag in ((0, start), (1, different)):
        if not isinstance(flag, bool):
            raise InvalidRequest("script_args", f"argument {index} must be true or false, got {flag!r}")
    if kind not in ("positive", "negative"):
        raise InvalidRequest("script_args", f"Unknown prompt type {kind}")
    if delimiter not in ("comma", "space"):
        raise InvalidRequest("script_args", f"Unknown variations delimiter {delimiter}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 500:
        raise InvalidRequest("script_args", f"grid margins must be 0..500, got {margin!r}")
    return MatrixSettings(start, different, kind, delimiter, int(margin))


def _parts(req, settings: MatrixSettings) -> list[str]:
    return (req.prompt if settings.prompt_type == "positive" else req.negative_prompt).split("|")


def prompts(parts: list[str], settings: MatrixSettings) -> list[str]:
    """Combination k takes part i + 1 when bit i of k is set (A1111's order)."""
    joiner = ", " if settings.delimiter == "comma" else " "
    out = []
    for k in range(2 ** (len(parts) - 1)):
        chosen = [text.strip().strip(",") for i, text in enumerate(parts[1:]) if k & (1 << i)]
        out.append(joiner.join(chosen + [parts[0]] if settings.put_at_start else [parts[0]] + chosen))
    return out


def job_requests(req, settings: MatrixSettings) -> list:
    field = "prompt" if settings.prompt_type == "positive" else "negative_prompt"
    return [dataclasses.replace(req, script=None, batch_size=1, n_iter=1, seed=req.seed + (i if settings.different_seeds
                                                                                             else 0), **{field: text})
            for i, text in enumerate(prompts(_parts(req, settings), settings))]


def check(req, settings: MatrixSettings, checks: ScriptChecks) -> None:
    parts = _parts(req, settings)
    if len(parts) < 2:
        raise InvalidRequest("script_args", f"{TITLE}: the {settings.prompt_type} prompt has no `|` to vary")
    if len(parts) > MAX_PARTS or 2 ** (len(parts) - 1) > checks.max_jobs:
        raise InvalidRequest("script_args", f"{TITLE}: {len(parts) - 1} variable parts make too many prompts "
                                            f"(at most {MAX_PARTS - 1} parts)")
    for job in job_requests(req, settings):
        try:
            checks.prepare(job)
        except BackendError as err:
            raise InvalidRequest("script_args", f"{TITLE}: {err}") from None


def run(req, settings: MatrixSettings, tools: ScriptTools) -> ScriptOutput:
    """As A1111's batches over the prompt list; each picture equals its prompt made alone with its seed."""
    parts = _parts(req, settings)
    jobs = job_requests(req, settings)
    out = ScriptOutput(saved=True, infotexts=[], grid_name="prompt_matrix")
    for n, job in enumerate(jobs):
        if tools.interrupted():
            out.interrupted = True
            break
        tools.count_job(n, len(jobs))
        tools.report(f"{TITLE}: prompt {n + 1} of {len(jobs)}")
        result = tools.process(job)
        if not result.images:
            out.interrupted = True
            break
        out.images.append(result.images[0])
        out.infotexts.append(result.infotexts[0])
        out.seeds.append(result.seeds[0])
        out.template = out.template or result
        out.warnings += [w for w in result.warnings if w not in out.warnings]
        if result.interrupted:
            out.interrupted = True
            break
    if out.images and not out.interrupted:
        grid = matrix_grid(out.images, parts, settings.margin_size)
        out.images.insert(0, grid)
        out.infotexts.insert(0, out.infotexts[0])
        out.seeds.insert(0, out.seeds[0])
        out.grids = 1
    return out


def matrix_grid(pictures: list, parts: list[str], margin: int):
    """A1111's draw_prompt_matrix: rows 2^((n-1) // 2); the first half of the variable parts label the columns."""
    rows = 1 << ((len(parts) - 1) // 2)
    grid = make_grid(pictures, rows=rows)
    variable = parts[1:]
    boundary = math.ceil(len(variable) / 2)
    across, down = variable[:boundary], variable[boundary:]
    columns = [[GridText(x, active=bool(pos & (1 << i))) for i, x in enumerate(across)]
               for pos in range(1 << len(across))]
    rows_texts = [[GridText(x, active=bool(pos & (1 << i))) for i, x in enumerate(down)]
                  for pos in range(1 << len(down))]
    width, height = pictures[0].size
    return annotate(grid, width, height, columns, rows_texts, margin)
