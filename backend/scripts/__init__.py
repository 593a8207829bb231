"""A1111's scripts, chosen by `script_name` with `script_args` in A1111's order: X/Y/Z plot, Prompt matrix and
Prompts from file or textbox (txt2img and img2img), Loopback, Poor man's outpainting, Outpainting mk2 and SD
upscale (img2img). Each turns one request into several jobs, which `ScriptTools.process` runs on the one
denoising loop, and joins the results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from backend.errors import InvalidRequest
from backend.scripts import (img2img_batch, loopback, outpainting, prompt_matrix, prompts_from_file, sd_upscale,
                             xyz_grid)
from backend.scripts.base import (Catalog, ScriptArg, ScriptChecks, ScriptOutput, ScriptRun, ScriptTools,
                                  SizeLimit)

TABS = ("txt2img", "img2img")


@dataclass(frozen=True)
class Script:
    """What a script offers: its controls (given what exists on the tab), its settings from A1111's positional
    script_args, a check against the request before it is queued, and the run itself. `picture_only`: it works
    on img2img's picture, without a mask."""

    title: str
    tabs: tuple[str, ...]
    arguments: Callable[[Catalog], list[ScriptArg]]
    settings: Callable[[list, Catalog], object]
    run: Callable[[object, object, ScriptTools], ScriptOutput]
    check: Callable[[object, object, ScriptChecks], None] = lambda req, settings, checks: None
    picture_only: bool = False
    keeps_random_seeds: Callable[[object], bool] = lambda settings: False
    listed: bool = True  # chosen by name through the API and the Script dropdown (else built by the facade)
    local_only: bool = False  # reads or writes server folders: only for a server used on its machine alone


SCRIPTS = (
    Script(outpainting.POOR_MANS, ("img2img",), lambda c: outpainting.POOR_MANS_ARGS,
           lambda args, c: outpainting.poor_mans_settings(args), outpainting.run_poor_mans,
           lambda req, s, checks: outpainting.check_poor_mans(req, s, checks.size), picture_only=True),
    Script(outpainting.MK2, ("img2img",), lambda c: outpainting.MK2_ARGS, lambda args, c: outpainting.mk2_settings(args),
           outpainting.run_mk2, lambda req, s, checks: outpainting.check_mk2(req, s, checks.size), picture_only=True),
    Script(sd_upscale.TITLE, ("img2img",), lambda c: sd_upscale.arguments(list(c.upscalers)),
           lambda args, c: sd_upscale.settings(args, list(c.upscalers)), sd_upscale.run,
           lambda req, s, checks: sd_upscale.check(req, s, checks.size), picture_only=True),
    Script(xyz_grid.TITLE, TABS, xyz_grid.arguments, xyz_grid.settings, xyz_grid.run, xyz_grid.check,
           keeps_random_seeds=xyz_grid.keeps_random_seeds),
    Script(prompt_matrix.TITLE, TABS, prompt_matrix.arguments, prompt_matrix.settings, prompt_matrix.run,
           prompt_matrix.check),
    Script(prompts_from_file.TITLE, TABS, prompts_from_file.arguments, prompts_from_file.settings,
           prompts_from_file.run, prompts_from_file.check, keeps_random_seeds=prompts_from_file.keeps_random_seeds),
    Script(loopback.TITLE, ("img2img",), loopback.arguments, loopback.settings, loopback.run, loopback.check),
    Script(img2img_batch.TITLE, ("img2img",), lambda c: [], lambda args, c: None, img2img_batch.run,
           img2img_batch.check, keeps_random_seeds=lambda settings: True, listed=False, local_only=True),
)
TITLES = tuple(script.title for script in SCRIPTS)


def titles(tab: str) -> tuple[str, ...]:
    return tuple(script.title for script in SCRIPTS if tab in script.tabs and script.listed)


def find(name: str, tab: str = "img2img", listed_only: bool = True) -> Script:
    for script in SCRIPTS:
        if script.title.lower() == str(name).strip().lower() and tab in script.tabs \
                and (script.listed or not listed_only):
            return script
    raise InvalidRequest("script_name", f"unknown script '{name}'; {tab} has: {', '.join(titles(tab))} "
                                        "(GET /sdapi/v1/scripts)")


def arguments(title: str, catalog: Catalog) -> list[ScriptArg]:
    """A script's controls in A1111's order, with their defaults and ranges."""
    return find(title, catalog.tab).arguments(catalog)


def api_info(catalogs: dict[str, Catalog]) -> list[dict]:
    """GET /sdapi/v1/script-info, in A1111's ScriptInfo shape: each script once per tab."""
    return [{"name": script.title.lower(), "is_alwayson": False, "is_img2img": tab == "img2img",
             "args": [a.api() for a in script.arguments(catalogs[tab])]}
            for tab in TABS for script in SCRIPTS if tab in script.tabs and script.listed]


def api_names() -> dict:
    """GET /sdapi/v1/scripts: A1111 lists the titles in lower case, per tab."""
    return {tab: sorted(title.lower() for title in titles(tab)) for tab in TABS}


def parse(name: str, args: list | None, catalog: Catalog) -> ScriptRun:
    """A1111's positional script_args (missing ones take the script's defaults) -> a ScriptRun."""
    script = find(name, catalog.tab)
    return ScriptRun(script.title, script.settings(list(args or []), catalog), catalog.tab)


def check(run: ScriptRun, req, checks: ScriptChecks) -> None:
    """What can only be checked against the request (its size, its picture, each job it makes), before it is
    queued."""
    script = find(run.title, run.tab, listed_only=False)
    if req.kind != run.tab:
        raise InvalidRequest("script_name", f"{run.title} was chosen for {run.tab}, not {req.kind}")
    if script.picture_only and (req.init_image is None or req.mask is not None):
        raise InvalidRequest("script_name", f"{run.title} runs on img2img's picture, without a mask")
    script.check(req, run.settings, checks)


def keeps_random_seeds(run: ScriptRun) -> bool:
    """Whether the script draws its jobs' random seeds itself (X/Y/Z plot's `Keep -1 for seeds`)."""
    return find(run.title, run.tab, listed_only=False).keeps_random_seeds(run.settings)


def is_local_only(run: ScriptRun) -> bool:
    return find(run.title, run.tab, listed_only=False).local_only


def run(script: ScriptRun, req, tools: ScriptTools) -> ScriptOutput:
    return find(script.title, script.tab, listed_only=False).run(req, script.settings, tools)


__all__ = ["SCRIPTS", "TABS", "TITLES", "Catalog", "Script", "ScriptArg", "ScriptChecks", "ScriptOutput",
           "ScriptRun", "ScriptTools", "SizeLimit", "api_info", "api_names", "arguments", "check", "find",
           "is_local_only", "keeps_random_seeds", "parse", "run", "titles"]
