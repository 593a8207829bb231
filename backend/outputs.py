"""Saving images the A1111 way: outputs/<kind>-images/YYYY-MM-DD/NNNNN-SEED.png, infotext in the PNG."""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

_NUMBERED = re.compile(r"^(\d+)[-.]")


class OutputWriter:
    def __init__(self, root: Path):
        self.root = root

    def folder(self, kind: str, grid: bool = False, day: dt.date | None = None) -> Path:
        """kind is "txt2img" or "img2img"."""
        day = day or dt.date.today()
        return self.root / f"{kind}-{'grids' if grid else 'images'}" / day.isoformat()

    def save_image(self, image: Image.Image, kind: str, seed: int, infotext: str) -> Path:
        folder = self.folder(kind)
        return _save_numbered(image, folder, lambda n: f"{n:05d}-{seed}.png", {"parameters": infotext})

    def save_extras(self, image: Image.Image, texts: dict[str, str]) -> Path:
        """Extras results go to outputs/extras-images/NNNNN.png (no date folder, as A1111), with `texts` (the
        source's `parameters`, `postprocessing`, `extras`) as PNG text chunks."""
        return _save_numbered(image, self.root / "extras-images", lambda n: f"{n:05d}.png", texts)

    def save_named(self, image: Image.Image, folder: Path, stem: str, texts: dict[str, str]) -> Path:
        """Batch-from-folder Extras results keep their source's name (A1111's default); a name already there is
        never overwritten: `stem-1.png`, `stem-2.png`, ... instead."""
        return _save_numbered(image, folder, lambda n: f"{stem}-{n}.png" if n else f"{stem}.png", texts, first=0)

    def save_grid(self, image: Image.Image, kind: str, infotext: str) -> Path:
        folder = self.folder(kind, grid=True)
        return _save_numbered(image, folder, lambda n: f"grid-{n:04d}.png", {"parameters": infotext})


def next_number(folder: Path) -> int:
    """One past the highest number any file in `folder` starts with (A1111 keeps counting, never reuses)."""
    if not folder.is_dir():
        return 0
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name.removeprefix("grid-")))]
    return max(numbers, default=-1) + 1


def png_info(texts: dict[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, text in texts.items():
        info.add_text(key, text)
    return info


def _save_numbered(image: Image.Image, folder: Path, name_for, texts: dict[str, str],
                   first: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    number = next_number(folder) if first is None else first
    # Write to a temporary file, then link it into place: link() fails instead of overwriting, so a file
    # that appeared meanwhile (another process) is never replaced; we just take the next number.
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=png_info(texts))
        while True:
            target = folder / name_for(number)
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                number += 1
    finally:
        os.unlink(tmp)


def read_infotext(image: Image.Image) -> str | None:
    """The generation parameters stored in an image: PNG `parameters` text, or EXIF UserComment."""
    text = image.info.get("parameters")
    if text:
        return str(text)
    exif = image.getexif().get_ifd(0x8769).get(0x9286) if hasattr(image, "getexif") else None
    if isinstance(exif, bytes):
        body = exif[8:]
        encoding = "utf-16-be" if exif[:8] == b"UNICODE\x00" else "utf-8"
        return body.decode(encoding, errors="replace").strip("\x00") or None
    return exif or None
