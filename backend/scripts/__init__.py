"""A1111's img2img scripts, chosen by `script_name` with `script_args` in A1111's order: Poor man's outpainting,
Outpainting mk2 and SD upscale. Each turns one request into several img2img jobs (tiles or borders) through
`ScriptTools.process`, which runs them on the one denoising loop, and joins the results."""

from __future__ import annotations

from backend.errors import InvalidRequest
from backend.scripts import outpainting, sd_upscale
from backend.scripts.base import ScriptArg, ScriptOutput, ScriptRun, ScriptTools

TITLES = (outpainting.POOR_MANS, outpainting.MK2, sd_upscale.TITLE)


def arguments(title: str, upscaler_names: list[str]) -> list[ScriptArg]:
    """A script's controls in A1111's order, with their defaults and ranges."""
    if title == outpainting.POOR_MANS:
        return outpainting.POOR_MANS_ARGS
    if title == outpainting.MK2:
        return outpainting.MK2_ARGS
    return sd_upscale.arguments(upscaler_names)


def api_info(upscaler_names: list[str]) -> list[dict]:
    """GET /sdapi/v1/script-info, in A1111's ScriptInfo shape."""
    return [{"name": title.lower(), "is_alwayson": False, "is_img2img": True,
             "args": [a.api() for a in arguments(title, upscaler_names)]} for title in TITLES]


def api_names() -> dict:
    """GET /sdapi/v1/scripts: A1111 lists the titles in lower case, per tab."""
    return {"txt2img": [], "img2img": sorted(title.lower() for title in TITLES)}


def find_title(name: str) -> str:
    for title in TITLES:
        if title.lower() == str(name).strip().lower():
            return title
    raise InvalidRequest("script_name", f"unknown script '{name}'; img2img has: {', '.join(TITLES)} "
                                        "(GET /sdapi/v1/scripts)")


def parse(name: str, args: list | None, upscaler_names: list[str]) -> ScriptRun:
    """A1111's positional script_args (missing ones take the script's defaults) -> a ScriptRun."""
    title = find_title(name)
    args = list(args or [])
    if title == outpainting.POOR_MANS:
        return ScriptRun(title, outpainting.poor_mans_settings(args))
    if title == outpainting.MK2:
        return ScriptRun(title, outpainting.mk2_settings(args))
    return ScriptRun(title, sd_upscale.settings(args, upscaler_names))


def check(script: ScriptRun, req) -> None:
    """What can only be checked against the request (its tile size), before it is queued."""
    if script.title == outpainting.POOR_MANS:
        outpainting.check_poor_mans(req, script.settings)
    elif script.title == sd_upscale.TITLE:
        sd_upscale.check(req, script.settings)


def run(script: ScriptRun, req, tools: ScriptTools) -> ScriptOutput:
    if script.title == outpainting.POOR_MANS:
        return outpainting.run_poor_mans(req, script.settings, tools)
    if script.title == outpainting.MK2:
        return outpainting.run_mk2(req, script.settings, tools)
    return sd_upscale.run(req, script.settings, tools)


__all__ = ["ScriptArg", "ScriptOutput", "ScriptRun", "ScriptTools", "TITLES", "api_info", "api_names", "arguments",
           "check", "find_title", "parse", "run"]
