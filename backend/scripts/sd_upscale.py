"""A1111's SD upscale: upscale the picture (an image upscaler by `scale`; "None" keeps its size, as in A1111),
cut it into the request's width x height tiles overlapping by `overlap`, run img2img on each tile, and join the
tiles with linear blends over the overlaps. Seeds: each batch of tiles starts one above the previous batch's
first seed; each batch count (n_iter) starts one above the last."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from backend import tile_grid
from backend.errors import InvalidRequest
from backend.scripts.base import ScriptArg, SizeLimit, ScriptOutput, ScriptTools, arg, check_smaller_than_tile, info

TITLE = "SD upscale"


def arguments(upscaler_names: list[str]) -> list[ScriptArg]:
    """The controls, in A1111's order (its script_args order)."""
    return [info("Will upscale the image by the selected scale factor; use width and height sliders to set tile "
                 "size"),
            ScriptArg("overlap", "slider", "Tile overlap", 64, 0, 256, 16),
            ScriptArg("upscaler", "radio", "Upscaler", "None", choices=tuple(upscaler_names)),  # name or index
            ScriptArg("scale", "slider", "Scale Factor", 2.0, 1.0, 4.0, 0.05)]


@dataclass(frozen=True)
class SdUpscaleSettings:
    overlap: int
    upscaler: str
    scale: float


def settings(args: list, upscaler_names: list[str]) -> SdUpscaleSettings:
    """A1111's order: (an info text), overlap, upscaler (its index in the upscaler list, or its name),
    scale factor."""
    spec = arguments(upscaler_names)
    chosen = arg(args, spec, "upscaler", lambda v: v)
    if isinstance(chosen, int) and not isinstance(chosen, bool):
        if not 0 <= chosen < len(upscaler_names):
            raise InvalidRequest("script_args", f"upscaler index {chosen} is out of range 0..{len(upscaler_names) - 1}")
        name = upscaler_names[chosen]
    else:
        by_lower = {n.lower(): n for n in upscaler_names}
        name = by_lower.get(str(chosen).strip().lower())
        if name is None:
            raise InvalidRequest("script_args", f"unknown upscaler '{chosen}'; available: {', '.join(upscaler_names)}")
    result = SdUpscaleSettings(overlap=arg(args, spec, "overlap", int), upscaler=name,
                               scale=arg(args, spec, "scale", float))
    if not 0 <= result.overlap <= 256:
        raise InvalidRequest("script_args", f"tile overlap must be 0..256, got {result.overlap}")
    if not 1.0 <= result.scale <= 4.0:
        raise InvalidRequest("script_args", f"scale factor must be 1..4, got {result.scale}")
    return result


def check(req, settings: SdUpscaleSettings, limit: SizeLimit) -> None:
    check_smaller_than_tile("tile overlap", settings.overlap, req)
    if settings.upscaler != "None":
        limit.check(limit.upscale_peak(req.init_image.size, settings.upscaler, settings.scale), "the upscaled picture")


def run(req, settings: SdUpscaleSettings, tools: ScriptTools) -> ScriptOutput:
    picture = req.init_image.convert("RGB")
    if settings.upscaler != "None":
        tools.report(f"{TITLE}: upscaling with {settings.upscaler}")
        picture = tools.upscale(picture, settings.upscaler, settings.scale)
    grid = tile_grid.split(picture, req.width, req.height, settings.overlap)
    params = (("SD upscale overlap", settings.overlap), ("SD upscale upscaler", settings.upscaler))
    tile_req = dataclasses.replace(req, n_iter=1, batch_size=1, save_images=False, script=None,
                                   extra_params=req.extra_params + params)
    out = ScriptOutput()
    tiles = grid.tiles()
    for n in range(req.n_iter):
        done = {}
        for index, (x, y, tile) in enumerate(tiles):
            tools.report(f"{TITLE}: tile {index + 1} of {len(tiles)}" + (f", pass {n + 1}" if req.n_iter > 1 else ""))
            batch, within = divmod(index, req.batch_size)
            result = tools.process(dataclasses.replace(tile_req, init_image=tile, seed=req.seed + n + batch + within))
            if result.images:
                done[(x, y)] = result.images[0]
                out.infotext = out.infotext or result.infotexts[0]
            if result.interrupted or not result.images:
                out.interrupted = True
                break
        out.images.append(tile_grid.combine(grid.map(lambda x, y, tile, done=done: done.get((x, y), tile))))
        out.seeds.append(req.seed + n)
        if out.interrupted:
            break
    return out
