"""A1111's img2img Batch: every picture of a folder on this machine through img2img with the request's settings,
one at a time (opened when its turn comes), each with the mask of the same file name from a mask folder (else
that folder's first mask, as A1111). With an output folder the results keep their picture's name (`name.png`, or `name-N` for
several per picture; never over an existing file); without one they go where img2img's go. Offered only where
server folders are (the facade checks on every call); not one of the API's scripts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from backend.errors import BackendError
from backend.scripts.base import ScriptChecks, ScriptOutput, ScriptTools
from backend.upscale.extras import open_picture

TITLE = "img2img batch"
MAX_KEPT = 32  # results shown; all are saved


@dataclass(frozen=True)
class BatchSettings:
    pictures: tuple[Path, ...]
    masks: tuple[Path, ...]  # the mask folder's pictures, by name
    output: Path | None
    max_pixels: int

    def mask_for(self, picture: Path) -> Path | None:
        """A1111's rule: the mask with the picture's file name, else the folder's first."""
        by_name = {mask.name: mask for mask in self.masks}
        return by_name.get(picture.name, self.masks[0]) if self.masks else None


def check(req, settings: BatchSettings, checks: ScriptChecks) -> None:
    """The request as each picture's job would be checked (with the first picture)."""
    checks.prepare(dataclasses.replace(req, script=None))


def run(req, settings: BatchSettings, tools: ScriptTools) -> ScriptOutput:
    out = ScriptOutput(saved=True, infotexts=[])
    total = len(settings.pictures)
    for number, path in enumerate(settings.pictures):
        if tools.interrupted():
            out.interrupted = True
            break
        tools.count_job(number, total)
        tools.report(f"img2img batch: picture {number + 1} of {total}")
        try:
            picture = open_picture(path, settings.max_pixels)
            mask_path = settings.mask_for(path)
            mask = open_picture(mask_path, settings.max_pixels) if mask_path else None
        except (OSError, ValueError, BackendError, Image.DecompressionBombError) as err:
            out.warnings.append(f"skipped {path.name}: {err}")
            continue
        job = dataclasses.replace(req, script=None, init_image=picture, mask=mask,
                                  save_images=req.save_images and settings.output is None)
        try:
            result = tools.process(job)
        except BackendError as err:
            out.warnings.append(f"{path.name}: {err}")
            continue
        for index, (image, text) in enumerate(zip(result.images, result.infotexts, strict=True)):
            if settings.output is not None:
                stem = path.stem if len(result.images) == 1 else f"{path.stem}-{index}"
                tools.save_named(image, settings.output, stem, text)
            if len(out.images) < MAX_KEPT:
                out.images.append(image)
                out.infotexts.append(text)
                out.seeds.append(result.seeds[index])
        out.template = out.template or result
        out.warnings += [w for w in result.warnings if w not in out.warnings]
        if result.interrupted:
            out.interrupted = True
            break
    return out
