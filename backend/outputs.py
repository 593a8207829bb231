"""Saving images the A1111 way: outputs/<kind>-images/YYYY-MM-DD/NNNNN-SEED.<format>, in A1111's formats
(`samples_format`, `grid_format`: png, jpg, webp, avif where Pillow has it) with the infotext inside: PNG text
chunks, or for the others the EXIF UserComment A1111 writes (UNICODE, UTF-16 big-endian)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, PngImagePlugin, features

_NUMBERED = re.compile(r"^(\d+)[-.]")

FORMATS = ("png", "jpg", "jpeg", "webp", *(("avif",) if features.check("avif") else ()))
_PIL_NAMES = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


@dataclass(frozen=True)
class ImageFormat:
    """How a picture is written: A1111's samples_format / grid_format, jpeg_quality and webp_lossless."""

    extension: str = "png"
    quality: int = 80
    lossless: bool = False

    @classmethod
    def from_options(cls, get: Callable[[str], object], grid: bool = False) -> ImageFormat:
        extension = str(get("grid_format" if grid else "samples_format")).lower()
        quality = max(1, min(100, int(get("jpeg_quality"))))  # A1111's slider range
        return cls(extension if extension in FORMATS else "png", quality, bool(get("webp_lossless")))


def encode_image(image: Image.Image, texts: dict[str, str], fmt: ImageFormat = ImageFormat()) -> bytes:
    """The file's bytes: PNG with every text as a chunk; other formats with `parameters` as EXIF UserComment
    (JPEG has no alpha: RGBA pictures are flattened, as A1111 does)."""
    buf = io.BytesIO()
    if fmt.extension == "png":
        image.save(buf, format="PNG", pnginfo=png_info(texts))
        return buf.getvalue()
    exif = Image.Exif()
    if texts.get("parameters"):
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\x00" + texts["parameters"].encode("utf-16-be")
    if fmt.extension in ("jpg", "jpeg") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.save(buf, format=_PIL_NAMES[fmt.extension], quality=fmt.quality, lossless=fmt.lossless,
               exif=exif.tobytes())
    return buf.getvalue()


class OutputWriter:
    def __init__(self, root: Path, options=None):
        self.root = root
        self.options = options  # backend.options.Options: the formats are read at every save

    def for_owner(self, owner: str) -> OutputWriter:
        """An account's own outputs: `<root>/<account>/` with A1111's layout inside (private outputs)."""
        return OutputWriter(self.root / owner_folder(owner), self.options)

    def format(self, grid: bool = False) -> ImageFormat:
        return ImageFormat.from_options(self.options.get, grid) if self.options is not None else ImageFormat()

    def folder(self, kind: str, grid: bool = False, day: dt.date | None = None) -> Path:
        """kind is "txt2img" or "img2img"."""
        day = day or dt.date.today()
        return self.root / f"{kind}-{'grids' if grid else 'images'}" / day.isoformat()

    def save_image(self, image: Image.Image, kind: str, seed: int, infotext: str) -> Path:
        folder, fmt = self.folder(kind), self.format()
        return _save_numbered(image, folder, lambda n: f"{n:05d}-{seed}.{fmt.extension}", {"parameters": infotext},
                              fmt)

    def save_extras(self, image: Image.Image, texts: dict[str, str]) -> Path:
        """Extras results go to outputs/extras-images/NNNNN.png (no date folder, as A1111), with `texts` (the
        source's `parameters`, `postprocessing`, `extras`) as PNG text chunks."""
        fmt = self.format()
        return _save_numbered(image, self.root / "extras-images", lambda n: f"{n:05d}.{fmt.extension}", texts, fmt)

    def save_named(self, image: Image.Image, folder: Path, stem: str, texts: dict[str, str]) -> Path:
        """Batch-from-folder Extras results keep their source's name (A1111's default); a name already there is
        never overwritten: `stem-1.png`, `stem-2.png`, ... instead."""
        fmt = self.format()
        return _save_numbered(image, folder, lambda n: f"{stem}-{n}.{fmt.extension}" if n else f"{stem}.{fmt.extension}",
                              texts, fmt, first=0)

    def save_grid(self, image: Image.Image, kind: str, infotext: str, basename: str = "grid") -> Path:
        """A1111's grid names: `grid-0000`, or the script's (`xyz_grid-0000`, `prompt_matrix-0000`), each
        basename counting on its own."""
        folder, fmt = self.folder(kind, grid=True), self.format(grid=True)
        return _save_numbered(image, folder, lambda n: f"{basename}-{n:04d}.{fmt.extension}",
                              {"parameters": infotext}, fmt, first=next_number(folder, basename))


def owner_folder(owner: str) -> str:
    """A folder name for an account: its name where that is a safe file name, else a stable hash of it."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", owner) and owner not in (".", ".."):
        return owner
    return "user-" + hashlib.sha256(owner.encode("utf-8")).hexdigest()[:16]


def next_number(folder: Path, basename: str = "") -> int:
    """One past the highest number any file in `folder` starts with, after `basename-` when given (A1111 keeps
    counting, never reuses)."""
    if not folder.is_dir():
        return 0
    prefix = f"{basename}-" if basename else ""
    numbers = [int(m.group(1)) for p in folder.iterdir()
               if p.name.startswith(prefix) and (m := _NUMBERED.match(p.name[len(prefix):]))]
    return max(numbers, default=-1) + 1


def png_info(texts: dict[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, text in texts.items():
        info.add_text(key, text)
    return info


def _save_numbered(image: Image.Image, folder: Path, name_for, texts: dict[str, str], fmt: ImageFormat,
                   first: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    number = next_number(folder) if first is None else first
    # Write to a temporary file, then link it into place: link() fails instead of overwriting, so a file
    # that appeared meanwhile (another process) is never replaced; we just take the next number.
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode_image(image, texts, fmt))
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
