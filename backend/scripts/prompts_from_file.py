"""A1111's "Prompts from file or textbox" (txt2img and img2img): each non-empty line is a job, either a prompt or
A1111's `--key value` options (`--prompt "..." --negative_prompt "..." --steps 30 --seed 5 ...`, with A1111's
list of keys). A line's prompt goes before (or after) the request's own prompt, joined by a space. Seeds: each
job draws its own unless "Iterate seed every line" (the seed moves on by batch size x batch count per line) or
"Use same random seed for all lines"."""

from __future__ import annotations

import dataclasses
import random
import shlex
from dataclasses import dataclass

from backend.errors import BackendError, InvalidRequest
from backend.scripts.base import Catalog, ScriptArg, ScriptChecks, ScriptOutput, ScriptTools

TITLE = "Prompts from file or textbox"
POSITIONS = ("start", "end")

# A1111's keys: name -> (type, request field). Keys A1111 has that would write to server folders, or that
# have no effect in A1111 1.10 either, are refused by name.
KEYS = {
    "sd_model": (str, "checkpoint"), "prompt": (str, "prompt"), "negative_prompt": (str, "negative_prompt"),
    "styles": (str, "styles"), "seed": (int, "seed"), "subseed_strength": (float, "subseed_strength"),
    "subseed": (int, "subseed"), "seed_resize_from_h": (int, "seed_resize_from_h"),
    "seed_resize_from_w": (int, "seed_resize_from_w"), "sampler_name": (str, "sampler_name"),
    "batch_size": (int, "batch_size"), "n_iter": (int, "n_iter"), "steps": (int, "steps"),
    "cfg_scale": (float, "cfg_scale"), "width": (int, "width"), "height": (int, "height"),
    "restore_faces": (bool, None), "tiling": (bool, "tiling"), "do_not_save_samples": (bool, None),
    "do_not_save_grid": (bool, None),
}
REFUSED_KEYS = {
    "outpath_samples": "it would write to a folder of the server's choosing; not offered",
    "outpath_grids": "it would write to a folder of the server's choosing; not offered",
    "prompt_for_display": "it only changes the prompt shown, which is not supported here",
    "sampler_index": "A1111 1.10 ignores it too; use --sampler_name",
}


@dataclass(frozen=True)
class Line:
    """One job: the request fields the line sets, or a warning when it was taken as a plain prompt."""

    fields: dict
    warning: str = ""


@dataclass(frozen=True)
class PromptsSettings:
    iterate_seed: bool
    same_seed: bool
    position: str
    lines: tuple[Line, ...]


def arguments(catalog: Catalog) -> list[ScriptArg]:
    return [ScriptArg("checkbox_iterate", "checkbox", "Iterate seed every line", False),
            ScriptArg("checkbox_iterate_batch", "checkbox", "Use same random seed for all lines", False),
            ScriptArg("prompt_position", "radio", "Insert prompts at the", "start", choices=POSITIONS),
            ScriptArg("prompt_txt", "text", "List of prompt inputs", "")]


def settings(args: list, catalog: Catalog) -> PromptsSettings:
    given = list(args) + [False, False, "start", ""][len(args):]
    iterate, same, position, text = given[:4]
    for index, flag in ((0, iterate), (1, same)):
        if not isinstance(flag, bool):
            raise InvalidRequest("script_args", f"argument {index} must be true or false, got {flag!r}")
    if position not in POSITIONS:
        raise InvalidRequest("script_args", f"prompt position must be start or end, got {position!r}")
    if not isinstance(text, str):
        raise InvalidRequest("script_args", "the list of prompt inputs must be text")
    lines = tuple(parse_line(line, n + 1) for n, line in enumerate(x for x in (y.strip() for y in text.splitlines())
                                                                   if x))
    if not lines:
        raise InvalidRequest("script_args", f"{TITLE}: no prompts (one per line)")
    return PromptsSettings(iterate, same, position, lines)


def parse_line(line: str, number: int) -> Line:
    """A line with `--` is read as A1111's options; when that fails A1111 takes the whole line as a prompt,
    and so do we, saying so."""
    if "--" not in line:
        return Line({"prompt": line})
    try:
        return Line(parse_options(line))
    except ValueError as err:
        return Line({"prompt": line}, f"line {number} was used as a prompt, not read as options: {err}")


def parse_options(line: str) -> dict:
    """A1111's cmdargs: `--key value` pairs; --prompt and --negative_prompt take every word up to the next `--`."""
    words = shlex.split(line)
    fields, at = {}, 0
    while at < len(words):
        word = words[at]
        if not word.startswith("--"):
            raise ValueError(f'must start with "--": {word}')
        if at + 1 >= len(words):
            raise ValueError(f"missing argument for command line option {word}")
        key = word[2:]
        if key in ("prompt", "negative_prompt"):
            at += 1
            text = [words[at]]
            at += 1
            while at < len(words) and not words[at].startswith("--"):
                text.append(words[at])
                at += 1
            fields[key] = " ".join(text)
            continue
        if key in REFUSED_KEYS:
            raise InvalidRequest("script_args", f"{TITLE}: --{key} is refused: {REFUSED_KEYS[key]}")
        if key not in KEYS:
            raise ValueError(f"unknown commandline option: {word}")
        fields[key] = _typed(key, words[at + 1])
        at += 2
    return fields


def _typed(key: str, text: str):
    kind = KEYS[key][0]
    if kind is bool:
        return text == "true"  # as A1111: anything else is false
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"--{key} {text}: expected {'an integer' if kind is int else 'a number'}") from None


def job_request(req, line: Line, position: str, seed: int):
    """The request a line makes (A1111's copy of p with the line's values, its prompts joined to the request's)."""
    changes = {}
    for key, value in line.fields.items():
        kind, field = KEYS[key]
        if key == "restore_faces" and value:
            raise InvalidRequest("script_args", "--restore_faces true: face restoration needs GFPGAN/CodeFormer "
                                                "weights, which cannot be downloaded here")
        if key == "do_not_save_samples":
            changes["save_images"] = req.save_images and not value
        if field is None:
            continue
        changes[field] = tuple(s.strip() for s in value.split(",") if s.strip()) if key == "styles" else value
    for key in ("prompt", "negative_prompt"):
        own, given = getattr(req, key), line.fields.get(key)
        if given and own:
            changes[key] = f"{given} {own}" if position == "start" else f"{own} {given}"
    return dataclasses.replace(req, **{"script": None, "seed": seed, **changes})


def check(req, settings: PromptsSettings, checks: ScriptChecks) -> None:
    jobs = sum(line.fields.get("n_iter", req.n_iter) for line in settings.lines)
    if jobs > checks.max_jobs:
        raise InvalidRequest("script_args", f"{TITLE}: {jobs} batches are more than the {checks.max_jobs} one "
                                            "request may make")
    for number, line in enumerate(settings.lines, start=1):
        try:
            checks.prepare(job_request(req, line, settings.position, req.seed))
        except BackendError as err:
            raise InvalidRequest("script_args", f"{TITLE} line {number}: {err}") from None


def run(req, settings: PromptsSettings, tools: ScriptTools) -> ScriptOutput:
    seed = req.seed
    if (settings.iterate_seed or settings.same_seed) and seed == -1:
        seed = random.SystemRandom().randrange(4294967294)
    out = ScriptOutput(saved=True, infotexts=[])
    out.warnings += [line.warning for line in settings.lines if line.warning]
    for number, line in enumerate(settings.lines):
        if tools.interrupted():
            out.interrupted = True
            break
        tools.count_job(number, len(settings.lines))
        tools.report(f"{TITLE}: line {number + 1} of {len(settings.lines)}")
        result = tools.process(job_request(req, line, settings.position, seed))
        pictures = result.gallery if tools.return_grid else result.images
        texts = ([result.infotexts[0]] if result.grid is not None and tools.return_grid else []) + result.infotexts
        seeds = ([result.seeds[0]] if result.grid is not None and tools.return_grid else []) + result.seeds
        out.images += pictures
        out.infotexts += texts
        out.seeds += seeds
        out.template = out.template or result
        out.warnings += [w for w in result.warnings if w not in out.warnings]
        if settings.iterate_seed:
            seed += req.batch_size * req.n_iter
        if result.interrupted:
            out.interrupted = True
            break
    return out


def keeps_random_seeds(settings: PromptsSettings) -> bool:
    return True  # each line draws its own, unless one of the seed boxes is ticked (decided in run)
