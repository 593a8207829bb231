"""A1111's img2img scripts, chosen by `script_name` with `script_args` in A1111's order: Poor man's outpainting,
Outpainting mk2 and SD upscale. Each turns one request into several img2img jobs (tiles or borders) through
`ScriptTools.process`, which runs them on the one denoising loop, and joins the results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backend.errors import InvalidRequest
from backend.scripts import outpainting, sd_upscale
from backend.scripts.base import ScriptArg, ScriptOutput, ScriptRun, ScriptTools, SizeLimit


@dataclass(frozen=True)
class Script:
    """What a script offers: its controls (given the upscaler names), its settings from A1111's positional
    script_args, a check against the request before it is queued, and the run itself."""

    title: str
    arguments: Callable[[list[str]], list[ScriptArg]]
    settings: Callable[[list, list[str]], object]
    run: Callable[[object, object, ScriptTools], ScriptOutput]
    check: Callable[[object, object, SizeLimit], None] = lambda req, settings, limit: None


SCRIPTS = (
    Script(outpainting.POOR_MANS, lambda names: outpainting.POOR_MANS_ARGS,
           lambda args, names: outpainting.poor_mans_settings(args), outpainting.run_poor_mans,
           outpainting.check_poor_mans),
    Script(outpainting.MK2, lambda names: outpainting.MK2_ARGS, lambda args, names: outpainting.mk2_settings(args),
           outpainting.run_mk2, outpainting.check_mk2),
    Script(sd_upscale.TITLE, sd_upscale.arguments, sd_upscale.settings, sd_upscale.run, sd_upscale.check),
)
TITLES = tuple(script.title for script in SCRIPTS)


def find(name: str) -> Script:
    for script in SCRIPTS:
        if script.title.lower() == str(name).strip().lower():
            return script
    raise InvalidRequest("script_name", f"unknown script '{name}'; img2img has: {', '.join(TITLES)} "
                                        "(GET /sdapi/v1/scripts)")


def arguments(title: str, upscaler_names: list[str]) -> list[ScriptArg]:
    """A script's controls in A1111's order, with their defaults and ranges."""
    return find(title).arguments(upscaler_names)


def api_info(upscaler_names: list[str]) -> list[dict]:
    """GET /sdapi/v1/script-info, in A1111's ScriptInfo shape."""
    return [{"name": script.title.lower(), "is_alwayson": False, "is_img2img": True,
             "args": [a.api() for a in script.arguments(upscaler_names)]} for script in SCRIPTS]


def api_names() -> dict:
    """GET /sdapi/v1/scripts: A1111 lists the titles in lower case, per tab."""
    return {"txt2img": [], "img2img": sorted(title.lower() for title in TITLES)}


def parse(name: str, args: list | None, upscaler_names: list[str]) -> ScriptRun:
    """A1111's positional script_args (missing ones take the script's defaults) -> a ScriptRun."""
    script = find(name)
    return ScriptRun(script.title, script.settings(list(args or []), upscaler_names))


def check(run: ScriptRun, req, limit: SizeLimit) -> None:
    """What can only be checked against the request (its tile size, its picture's size), before it is queued."""
    find(run.title).check(req, run.settings, limit)


def run(script: ScriptRun, req, tools: ScriptTools) -> ScriptOutput:
    return find(script.title).run(req, script.settings, tools)


__all__ = ["SCRIPTS", "TITLES", "Script", "ScriptArg", "ScriptOutput", "ScriptRun", "ScriptTools", "SizeLimit",
           "api_info", "api_names", "arguments", "check", "find", "parse", "run"]
