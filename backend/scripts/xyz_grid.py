"""A1111's X/Y/Z plot (`scripts/xyz_grid.py` of 1.10): one request becomes a job per cell, each the request with
the cell's X, Y and Z values applied, run as the separate request it equals; the cells are joined into annotated
grids. The axis lists keep A1111's order per tab, so the API's axis indices are A1111's; an axis whose feature
this project lacks keeps its slot and is refused by name when chosen."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO

import numpy as np
from PIL import Image

from backend.errors import BackendError, Interrupted, InvalidRequest
from backend.grid import GridText, annotate, make_grid
from backend.scripts.base import Catalog, ScriptArg, ScriptChecks, ScriptOutput, ScriptTools

TITLE = "X/Y/Z plot"
SEED_AXES = ("Seed", "Var. seed")


# ------------------------------------------------------------------ axes

@dataclass(frozen=True)
class Axis:
    """One axis type. `apply(request, value, all values)` returns the cell's request; `missing` says why the
    axis cannot be used here (None: it can). `label_style`: how a value is written in the legend."""

    label: str
    kind: str  # int | float | str | permutations | size
    apply: Callable | None = None
    missing: str | None = None
    cost: float = 0.0
    choices: Callable[[Catalog], tuple[str, ...]] | None = None
    label_style: str = "with_label"  # with_label | value | joined | nothing
    tab: str | None = None  # only on this tab (None: both)

    def legend(self, value) -> str:
        if isinstance(value, float):
            value = round(value, 8)
        if self.label_style == "nothing":
            return ""
        if self.label_style == "joined":
            return ", ".join(value)
        if self.label_style == "value":
            return str(value)
        return f"{self.label}: {value}"


def _field(name: str) -> Callable:
    return lambda req, value, values: dataclasses.replace(req, **{name: value})


def _prompt_sr(req, value: str, values: list) -> object:
    if values[0] not in req.prompt and values[0] not in req.negative_prompt:
        raise InvalidRequest("script_args", f"Prompt S/R did not find {values[0]} in prompt or negative prompt")
    return dataclasses.replace(req, prompt=req.prompt.replace(values[0], value),
                               negative_prompt=req.negative_prompt.replace(values[0], value))


def _prompt_order(req, order: tuple[str, ...], values: list) -> object:
    """The tokens of `order`, where they first stand in the prompt (earliest first), are replaced in turn by
    `order`'s tokens: the prompt with those tokens permuted."""
    prompt = req.prompt
    positions = sorted((prompt.find(token), token) for token in order)
    pieces = []
    for _, token in positions:
        at = prompt.find(token)
        pieces.append(prompt[:at])
        prompt = prompt[at + len(token):]
    rebuilt = "".join(piece + order[i] for i, piece in enumerate(pieces))
    return dataclasses.replace(req, prompt=rebuilt + prompt)


def _styles(req, value: str, values: list) -> object:
    return dataclasses.replace(req, styles=(*req.styles, *value.split(",")))


def _uni_pc_order(req, value: int, values: list) -> object:
    return dataclasses.replace(req, unipc=dataclasses.replace(req.unipc, order=min(value, req.steps - 1)))


def _size(req, value: str, values: list) -> object:
    width, _, height = value.partition("x")
    try:
        return dataclasses.replace(req, width=int(width.strip()), height=int(height.strip()))
    except ValueError:
        raise InvalidRequest("script_args", f"Size axis: '{value}' is not WIDTHxHEIGHT") from None


def _vae(req, value: str, values: list) -> object:
    """A1111's names in any case; an unknown VAE is refused when the cell is checked (A1111 would quietly use
    Automatic)."""
    special = {"auto": "Automatic", "automatic": "Automatic", "none": "None"}
    return dataclasses.replace(req, vae=special.get(value.strip().lower(), value))


def _refiner(req, value: str, values: list) -> object:
    return dataclasses.replace(req, refiner_checkpoint=None if value in ("", "None", "none") else value)


def _missing(label: str, why: str, tab: str | None = None, kind: str = "float") -> Axis:
    return Axis(label, kind, missing=why, tab=tab)


NOT_IMPLEMENTED = "not implemented here yet"
AXES = (
    Axis("Nothing", "str", lambda req, value, values: req, label_style="nothing"),
    Axis("Seed", "int", _field("seed")),
    Axis("Var. seed", "int", _field("subseed")),
    Axis("Var. strength", "float", _field("subseed_strength")),
    Axis("Steps", "int", _field("steps")),
    Axis("Hires steps", "int", _field("hr_second_pass_steps"), tab="txt2img"),
    Axis("CFG Scale", "float", _field("cfg_scale")),
    _missing("Image CFG Scale", "it applies to instruct-pix2pix checkpoints, which are not supported here",
             tab="img2img"),
    Axis("Prompt S/R", "str", _prompt_sr, label_style="value"),
    Axis("Prompt order", "permutations", _prompt_order, label_style="joined"),
    Axis("Sampler", "str", _field("sampler_name"), label_style="value", tab="txt2img",
         choices=lambda c: c.samplers),
    Axis("Hires sampler", "str", _field("hr_sampler_name"), tab="txt2img", choices=lambda c: c.samplers),
    Axis("Sampler", "str", _field("sampler_name"), label_style="value", tab="img2img",
         choices=lambda c: c.samplers),
    Axis("Checkpoint name", "str", _field("checkpoint"), cost=1.0, label_style="value",
         choices=lambda c: tuple(sorted(c.checkpoints, key=str.casefold))),
    Axis("Negative Guidance minimum sigma", "float", _field("s_min_uncond")),
    Axis("Sigma Churn", "float", _field("s_churn")),
    Axis("Sigma min", "float", _field("s_tmin")),
    Axis("Sigma max", "float", _field("s_tmax")),
    Axis("Sigma noise", "float", _field("s_noise")),
    Axis("Schedule type", "str", _field("scheduler"), choices=lambda c: c.schedulers),
    _missing("Schedule min sigma", f"the sigma_min option is {NOT_IMPLEMENTED}"),
    _missing("Schedule max sigma", f"the sigma_max option is {NOT_IMPLEMENTED}"),
    _missing("Schedule rho", f"the rho option is {NOT_IMPLEMENTED}"),
    _missing("Beta schedule alpha", f"the beta schedule's options are {NOT_IMPLEMENTED}"),
    _missing("Beta schedule beta", f"the beta schedule's options are {NOT_IMPLEMENTED}"),
    Axis("Eta", "float", _field("eta")),
    Axis("Clip skip", "int", _field("clip_skip")),
    Axis("Denoising", "float", _field("denoising_strength")),
    Axis("Initial noise multiplier", "float", _field("initial_noise_multiplier")),
    _missing("Extra noise", f"img2img extra noise (img2img_extra_noise) is {NOT_IMPLEMENTED}"),
    Axis("Hires upscaler", "str", _field("hr_upscaler"), tab="txt2img", choices=lambda c: c.hires_upscalers),
    _missing("Cond. Image Mask Weight", f"inpainting_mask_weight is {NOT_IMPLEMENTED}", tab="img2img"),
    Axis("VAE", "str", _vae, cost=0.7, choices=lambda c: ("Automatic", "None", *c.vaes)),
    Axis("Styles", "str", _styles, choices=lambda c: c.styles),
    Axis("UniPC Order", "int", _uni_pc_order, cost=0.5),
    _missing("Face restore", "face restoration needs GFPGAN/CodeFormer weights, which cannot be downloaded here",
             kind="str"),
    Axis("Token merging ratio", "float", _field("token_merging_ratio")),
    Axis("Token merging ratio high-res", "float", _field("token_merging_ratio_hr")),
    _missing("Always discard next-to-last sigma", f"that option is {NOT_IMPLEMENTED}", kind="str"),
    _missing("SGM noise multiplier", f"that option is {NOT_IMPLEMENTED}", kind="str"),
    Axis("Refiner checkpoint", "str", _refiner, cost=1.0, label_style="value",
         choices=lambda c: ("None", *sorted(c.checkpoints, key=str.casefold))),
    Axis("Refiner switch at", "float", _field("refiner_switch_at")),
    Axis("RNG source", "str", _field("rng_source"), choices=lambda c: ("GPU", "CPU", "NV")),
    _missing("FP8 mode", "fp8 weights are not supported here", kind="str"),
    Axis("Size", "size", _size),
)


def axes_for(tab: str) -> tuple[Axis, ...]:
    """A1111's list for a tab: its axis indices are the API's."""
    return tuple(axis for axis in AXES if axis.tab in (None, tab))


def axis_choices(catalog: Catalog) -> list[list[str] | None]:
    """Per axis of the tab: the names its values dropdown offers, or None (values typed as text)."""
    return [list(axis.choices(catalog)) if axis.choices else None for axis in axes_for(catalog.tab)]


# ------------------------------------------------------------------ values, as A1111 parses them

_INT_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_FLOAT_RANGE = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
_FLOAT_COUNT = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*")
MAX_VALUES = 1000  # values on one axis: a range like 1-99999999 is refused before it is expanded


def split_csv(text: str) -> list[str]:
    """A1111's CSV reading of an axis's values: quotes group, every value stripped."""
    return [value.strip() for row in csv.reader(StringIO(text), skipinitialspace=True) for value in row]


def join_csv(values: list[str]) -> str:
    out = StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue().strip()


def _number(text: str) -> str:
    return text.replace(" ", "")


def expand_ints(values: list[str]) -> list:
    """`1-5` (inclusive), `1-5 (+2)`, `10-1 (-3)` (range() with the end + 1), `1-10 [5]` (linspace, truncated)."""
    out = []
    for value in values:
        step_range, count_range = _INT_RANGE.fullmatch(value), _INT_COUNT.fullmatch(value)
        if step_range:
            start, end = int(_number(step_range[1])), int(_number(step_range[2])) + 1
            step = int(step_range[3]) if step_range[3] else 1
            if step == 0:
                raise InvalidRequest("script_args", f"range '{value}' has a step of 0")
            _check_count(len(range(start, end, step)), value)
            out += list(range(start, end, step))
        elif count_range:
            count = int(count_range[3]) if count_range[3] else 1
            _check_count(count, value)
            out += [int(x) for x in np.linspace(int(_number(count_range[1])), int(_number(count_range[2])), count)]
        else:
            out.append(value)
    return out


def expand_floats(values: list[str]) -> list:
    """`0.5-1 (+0.1)` (numpy arange to end + step, as A1111, rounding and all), `0-1 [5]` (linspace)."""
    out = []
    for value in values:
        step_range, count_range = _FLOAT_RANGE.fullmatch(value), _FLOAT_COUNT.fullmatch(value)
        if step_range:
            start, end = float(_number(step_range[1])), float(_number(step_range[2]))
            step = float(step_range[3]) if step_range[3] else 1.0
            if step == 0 or (end - start) / step > MAX_VALUES:
                raise InvalidRequest("script_args", f"range '{value}' has a step of 0 or too many values")
            expanded = np.arange(start, end + step, step).tolist()
            _check_count(len(expanded), value)
            out += expanded
        elif count_range:
            count = int(float(count_range[3])) if count_range[3] else 1
            _check_count(count, value)
            out += np.linspace(float(_number(count_range[1])), float(_number(count_range[2])), count).tolist()
        else:
            out.append(value)
    return out


def _check_count(count: int, value: str) -> None:
    if count > MAX_VALUES:
        raise InvalidRequest("script_args", f"range '{value}' makes {count} values; at most {MAX_VALUES} per axis")


def _typed(axis: Axis, value, name: str):
    try:
        if axis.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if axis.kind == "float":
            number = float(value)
            if not np.isfinite(number):
                raise ValueError
            return number
    except (TypeError, ValueError, OverflowError):
        raise InvalidRequest("script_args", f"{name} axis ({axis.label}): '{value}' is not "
                                            f"{'an integer' if axis.kind == 'int' else 'a number'}") from None
    return str(value)


# ------------------------------------------------------------------ settings (A1111's 18 script_args)

@dataclass(frozen=True)
class AxisValues:
    axis: Axis
    values: tuple  # typed, expanded
    text: str  # as the user gave them (the grid infotext's `X Values`)


@dataclass(frozen=True)
class XyzSettings:
    x: AxisValues
    y: AxisValues
    z: AxisValues
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    margin_size: int = 0

    @property
    def axes(self) -> tuple[AxisValues, AxisValues, AxisValues]:
        return self.x, self.y, self.z


DEFAULTS = (1, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False)


def arguments(catalog: Catalog) -> list[ScriptArg]:
    """A1111's 18 controls, in its order."""
    labels = tuple(axis.label for axis in axes_for(catalog.tab))
    args = []
    for name, default in (("x", labels[1]), ("y", labels[0]), ("z", labels[0])):
        args += [ScriptArg(f"{name}_type", "dropdown", f"{name.upper()} type", default, choices=labels),
                 ScriptArg(f"{name}_values", "text", f"{name.upper()} values", ""),
                 ScriptArg(f"{name}_values_dropdown", "multiselect", f"{name.upper()} values", ())]
    args += [ScriptArg("draw_legend", "checkbox", "Draw legend", True),
             ScriptArg("include_lone_images", "checkbox", "Include Sub Images", False),
             ScriptArg("include_sub_grids", "checkbox", "Include Sub Grids", False),
             ScriptArg("no_fixed_seeds", "checkbox", "Keep -1 for seeds", False),
             ScriptArg("vary_seeds_x", "checkbox", "Vary seeds for X", False),
             ScriptArg("vary_seeds_y", "checkbox", "Vary seeds for Y", False),
             ScriptArg("vary_seeds_z", "checkbox", "Vary seeds for Z", False),
             ScriptArg("margin_size", "slider", "Grid margins (px)", 0, 0, 500, 2),
             ScriptArg("csv_mode", "checkbox", "Use text inputs instead of dropdowns", False)]
    return args


def settings(args: list, catalog: Catalog) -> XyzSettings:
    """A1111's positional script_args; missing ones take the defaults. An axis type is its index in the tab's
    list (as A1111's API) or its label."""
    given = list(args) + list(DEFAULTS[len(args):])
    if len(given) > len(DEFAULTS):
        raise InvalidRequest("script_args", f"{TITLE} takes {len(DEFAULTS)} arguments, got {len(args)}")
    given = [default if value is None else value for value, default in zip(given, DEFAULTS, strict=True)]
    flags = [_flag(given[i], i) for i in range(9, 16)]
    csv_mode = _flag(given[17], 17)
    margin = given[16]
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 500:
        raise InvalidRequest("script_args", f"argument 16 (margin_size) must be 0..500, got {margin!r}")
    axes = [_axis_values(name, given[3 * i], given[3 * i + 1], given[3 * i + 2], csv_mode, catalog)
            for i, name in enumerate("XYZ")]
    return XyzSettings(*axes, draw_legend=flags[0], include_lone_images=flags[1], include_sub_grids=flags[2],
                       no_fixed_seeds=flags[3], vary_seeds=(flags[4], flags[5], flags[6]), margin_size=int(margin))


def _flag(value, index: int) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):  # some clients send strings
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise InvalidRequest("script_args", f"argument {index} must be true or false, got {value!r}")
    return value


def _axis_values(name: str, kind, text, dropdown, csv_mode: bool, catalog: Catalog) -> AxisValues:
    axis = _find_axis(name, kind, catalog.tab)
    if axis.missing:
        raise InvalidRequest("script_args", f"{name} axis '{axis.label}' cannot be used: {axis.missing}")
    if axis.label == "Nothing":
        return AxisValues(axis, (0,), "")
    if axis.choices is not None and not csv_mode:
        if not isinstance(dropdown, list) or not all(isinstance(v, str) for v in dropdown):
            raise InvalidRequest("script_args", f"{name} values (dropdown) must be a list of names")
        if not dropdown and text:
            raise InvalidRequest("script_args", f"{name} axis '{axis.label}' takes its values from "
                                                f"{name.lower()}_values_dropdown (a list), or set csv_mode to use "
                                                f"the text {name.lower()}_values, as in A1111")
        raw, text = list(dropdown), join_csv(list(dropdown))
    else:
        if not isinstance(text, str):
            raise InvalidRequest("script_args", f"{name} values must be text")
        raw = split_csv(text)
    if axis.kind == "int":
        raw = expand_ints(raw)
    elif axis.kind == "float":
        raw = expand_floats(raw)
    elif axis.kind == "permutations":
        if len(raw) > 6:
            raise InvalidRequest("script_args", f"Prompt order: {len(raw)} tokens make too many orders (at most 6)")
        raw = list(itertools.permutations(raw))
    if not raw:
        raise InvalidRequest("script_args", f"{name} axis '{axis.label}' has no values")
    if len(raw) > MAX_VALUES:
        raise InvalidRequest("script_args", f"{name} axis has {len(raw)} values; at most {MAX_VALUES}")
    values = tuple(value if axis.kind == "permutations" else _typed(axis, value, name) for value in raw)
    return AxisValues(axis, values, text)


def _find_axis(name: str, kind, tab: str) -> Axis:
    axes = axes_for(tab)
    if isinstance(kind, int) and not isinstance(kind, bool):
        if not 0 <= kind < len(axes):
            raise InvalidRequest("script_args", f"{name} type {kind} is not one of {tab}'s axes (0..{len(axes) - 1})")
        return axes[kind]
    for axis in axes:
        if isinstance(kind, str) and axis.label.lower() == kind.strip().lower():
            return axis
    raise InvalidRequest("script_args", f"{name} type {kind!r} is not one of {tab}'s axes")


# ------------------------------------------------------------------ the cells

def fixed_seeds(req, settings: XyzSettings, rng: random.Random | None = None) -> tuple[object, XyzSettings]:
    """A1111: unless `Keep -1 for seeds`, the request's seeds, and -1 (or empty) values on a Seed axis, are
    drawn once for the whole plot."""
    if settings.no_fixed_seeds:
        return req, settings
    rng = rng or random.SystemRandom()
    draw = lambda seed: rng.randrange(4294967294) if seed in (-1, None, "") else seed  # noqa: E731
    req = dataclasses.replace(req, seed=draw(req.seed), subseed=draw(req.subseed))
    axes = [dataclasses.replace(a, values=tuple(draw(v) for v in a.values)) if a.axis.label in SEED_AXES else a
            for a in settings.axes]
    return req, dataclasses.replace(settings, x=axes[0], y=axes[1], z=axes[2])


def cell_request(req, settings: XyzSettings, ix: int, iy: int, iz: int):
    """The request one cell equals: X, then Y, then Z applied; A1111's `Vary seeds` add the cell's index."""
    req = dataclasses.replace(req, script=None)
    for axis_values, index in zip(settings.axes, (ix, iy, iz), strict=True):
        req = axis_values.axis.apply(req, axis_values.values[index], list(axis_values.values))
    counts = [len(a.values) for a in settings.axes]
    vary_x, vary_y, vary_z = settings.vary_seeds
    offset = (ix if vary_x else 0) + (iy * (counts[0] if vary_x else 1) if vary_y else 0)
    if vary_z:
        offset += iz * (counts[0] if vary_x else 1) * (counts[1] if vary_y else 1)
    return dataclasses.replace(req, seed=req.seed + offset) if offset and req.seed != -1 else req


def cell_order(settings: XyzSettings) -> list[tuple[int, int, int]]:
    """The costliest axis outermost (checkpoints, then VAEs, ...); by default Z, then Y, then X innermost."""
    costs = {"x": settings.x.axis.cost, "y": settings.y.axis.cost, "z": settings.z.axis.cost}
    first, second = "z", "y"
    for name in ("x", "y", "z"):
        others = [n for n in costs if n != name]
        if all(costs[name] > costs[o] for o in others):
            first = name
            a, b = others
            second = a if costs[a] > costs[b] else b
    third = next(n for n in ("x", "y", "z") if n not in (first, second))
    ranges = {"x": range(len(settings.x.values)), "y": range(len(settings.y.values)),
              "z": range(len(settings.z.values))}
    order = []
    for i in ranges[first]:
        for j in ranges[second]:
            for k in ranges[third]:
                at = {first: i, second: j, third: k}
                order.append((at["x"], at["y"], at["z"]))
    return order


def check(req, settings: XyzSettings, checks: ScriptChecks) -> None:
    """Everything A1111 would find wrong, before anything runs: the grid's size, the number of jobs, and each
    cell's request as its own request would be checked."""
    counts = [len(a.values) for a in settings.axes]
    cells = counts[0] * counts[1] * counts[2]
    megapixels = round(cells * req.width * req.height / 1_000_000)
    if megapixels >= checks.grid_megapixels:
        raise InvalidRequest("script_args", f"the grid would be too large ({megapixels} megapixels; the "
                                            f"img_max_size_mp option allows less than {checks.grid_megapixels})")
    if cells * req.n_iter > checks.max_jobs:
        raise InvalidRequest("script_args", f"{cells} cells x {req.n_iter} batches are more than the "
                                            f"{checks.max_jobs} jobs one request may make")
    for ix, iy, iz in cell_order(settings):
        try:
            checks.prepare(cell_request(req, settings, ix, iy, iz))
        except BackendError as err:
            raise InvalidRequest("script_args", f"{TITLE} cell {_cell_name(settings, ix, iy, iz)}: {err}") from None


def _cell_name(settings: XyzSettings, ix: int, iy: int, iz: int) -> str:
    parts = [a.axis.legend(a.values[i]) for a, i in zip(settings.axes, (ix, iy, iz), strict=True)]
    return "(" + ", ".join(p for p in parts if p) + ")"


def run(req, settings: XyzSettings, tools: ScriptTools) -> ScriptOutput:
    req, settings = fixed_seeds(req, settings)
    counts = [len(a.values) for a in settings.axes]
    total = counts[0] * counts[1] * counts[2]
    cells: dict[int, tuple[Image.Image, str, int]] = {}
    firsts: dict[int, object] = {}  # z -> the result of its first cell (ix = iy = 0): the grids' infotexts
    out = ScriptOutput(saved=True, grid_name="xyz_grid")
    for done, (ix, iy, iz) in enumerate(cell_order(settings)):
        index = ix + iy * counts[0] + iz * counts[0] * counts[1]
        if out.interrupted or tools.interrupted():
            out.interrupted = True
            break
        tools.count_job(done, total)
        tools.report(f"{TITLE}: cell {done + 1} of {total}")
        try:
            result = tools.process(cell_request(req, settings, ix, iy, iz))
        except Interrupted:
            out.interrupted = True
            break
        except BackendError as err:  # A1111 shows the error and leaves the cell empty; so do we, visibly
            out.warnings.append(f"{TITLE} cell {_cell_name(settings, ix, iy, iz)} failed: {err}")
            continue
        out.warnings += [w for w in result.warnings if w not in out.warnings]
        out.interrupted = out.interrupted or result.interrupted
        if not result.images:
            continue
        picture = result.grid if result.grid is not None and tools.return_grid else result.images[0]
        cells[index] = (picture, result.infotexts[0], result.seeds[0])
        out.template = out.template or result
        if ix == 0 and iy == 0:
            firsts[iz] = result
    if not cells:
        return out
    _assemble(out, settings, counts, cells, firsts, tools)
    return out


def _assemble(out: ScriptOutput, settings: XyzSettings, counts: list[int], cells: dict, firsts: dict,
              tools: ScriptTools) -> None:
    """[the Z grid] + [the sub-grids, if asked] + [the cells, if asked], infotexts aligned, as A1111."""
    size = next(iter(cells.values()))[0].size
    pictures = [cells[i][0] if i in cells else Image.new("RGB", size) for i in range(len(_all(counts)))]
    per_z = counts[0] * counts[1]
    subgrids = []
    for iz in range(counts[2]):
        grid = make_grid(pictures[iz * per_z:(iz + 1) * per_z], rows=counts[1])
        if settings.draw_legend:
            grid = annotate(grid, size[0], size[1], _texts(settings.x), _texts(settings.y), settings.margin_size)
        subgrids.append(grid)
    z_grid = make_grid(subgrids, rows=1)
    if settings.draw_legend:
        z_grid = annotate(z_grid, subgrids[0].width, subgrids[0].height, _texts(settings.z), [[GridText()]])
    sub_texts = [_grid_infotext(firsts.get(iz), settings, tools, with_z=False) for iz in range(counts[2])]
    main_text = _grid_infotext(firsts.get(0), settings, tools, with_z=True)
    first_seed = next(iter(cells.values()))[2]
    out.images, out.infotexts, out.seeds = [z_grid], [main_text], [first_seed]
    if settings.include_sub_grids:
        out.images += subgrids
        out.infotexts += sub_texts
        out.seeds += [firsts[iz].seeds[0] if iz in firsts else first_seed for iz in range(counts[2])]
    out.grids = len(out.images) if settings.include_sub_grids and counts[2] > 1 else 1
    if settings.include_lone_images:
        for i in range(len(pictures)):
            picture, text, seed = cells.get(i, (pictures[i], "", first_seed))
            out.images.append(picture)
            out.infotexts.append(text)
            out.seeds.append(seed)
    out.infotext = main_text


def _all(counts: list[int]) -> range:
    return range(counts[0] * counts[1] * counts[2])


def _texts(axis_values: AxisValues) -> list[list[GridText]]:
    return [[GridText(axis_values.axis.legend(value))] for value in axis_values.values]


def _grid_infotext(result, settings: XyzSettings, tools: ScriptTools, with_z: bool) -> str:
    """A1111's grid infotext: the first cell's parameters with `Script`, `X Type`, `X Values` (and `Fixed X
    Values` for seeds drawn once), the same for Y, and for Z on the main grid."""
    if result is None:
        return ""
    extra: list[tuple[str, object]] = [("Script", TITLE)]
    for name, axis_values in zip("XYZ", settings.axes, strict=True):
        if axis_values.axis.label == "Nothing" or name == "Z" and not with_z:
            continue
        extra += [(f"{name} Type", axis_values.axis.label), (f"{name} Values", axis_values.text)]
        if axis_values.axis.label in SEED_AXES and not settings.no_fixed_seeds:
            extra.append((f"Fixed {name} Values", ", ".join(str(v) for v in axis_values.values)))
    return tools.infotext(result, tuple(extra))


def keeps_random_seeds(settings: XyzSettings) -> bool:
    return settings.no_fixed_seeds
