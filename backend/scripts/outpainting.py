"""A1111's two outpainting scripts. Both grow the picture by `pixels` in the chosen directions, to a multiple of 64
on each axis, and let img2img inpaint the new border:

- Poor man's outpainting cuts the grown picture into the request's width x height tiles (overlapping by
  `pixels`), inpaints every tile that reaches the border (seeds counting up from the request's), and joins
  them as A1111's tile grid does; the tiles inside are left as they were.
- Outpainting mk2 grows one direction at a time: the new strip is first filled with noise shaped like the
  picture's own (matched_noise.py), then a band at most the request's size, reaching into the picture,
  is inpainted from that "original" content with a wide blur along the direction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from backend import tile_grid
from backend.errors import InvalidRequest
from backend.generation.requests import MaskedContent
from backend.scripts.base import SizeLimit, ScriptArg, ScriptOutput, ScriptTools, arg, check_smaller_than_tile, info
from backend.scripts.matched_noise import matched_noise

POOR_MANS = "Poor man's outpainting"
MK2 = "Outpainting mk2"
DIRECTIONS = ("left", "right", "up", "down")
FILLS = ("fill", "original", "latent noise", "latent nothing")


# The controls, in A1111's order (its script_args order)
POOR_MANS_ARGS = [
    ScriptArg("pixels", "slider", "Pixels to expand", 128, 8, 256, 8),
    ScriptArg("mask_blur", "slider", "Mask blur", 4, 0, 64, 1),
    ScriptArg("fill", "radio", "Masked content", "fill", choices=FILLS),  # sent as its index, as A1111's
    ScriptArg("direction", "checkboxes", "Outpainting direction", DIRECTIONS, choices=DIRECTIONS),
]
MK2_ARGS = [
    info("Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8"),
    ScriptArg("pixels", "slider", "Pixels to expand", 128, 8, 256, 8),
    ScriptArg("mask_blur", "slider", "Mask blur", 8, 0, 64, 1),
    ScriptArg("direction", "checkboxes", "Outpainting direction", DIRECTIONS, choices=DIRECTIONS),
    ScriptArg("noise_q", "slider", "Fall-off exponent (lower=higher detail)", 1.0, 0.0, 4.0, 0.01),
    ScriptArg("color_variation", "slider", "Color variation", 0.05, 0.0, 1.0, 0.01),
]


@dataclass(frozen=True)
class PoorMansSettings:
    pixels: int
    mask_blur: int
    inpainting_fill: MaskedContent
    directions: tuple[str, ...]


@dataclass(frozen=True)
class Mk2Settings:
    pixels: int
    mask_blur: int
    directions: tuple[str, ...]
    noise_q: float  # fall-off exponent of the noise's spectrum (lower = more detail)
    color_variation: float


def poor_mans_settings(args: list) -> PoorMansSettings:
    """A1111's order: pixels, mask_blur, inpainting_fill (index or name), direction."""
    spec = POOR_MANS_ARGS
    settings = PoorMansSettings(
        pixels=arg(args, spec, "pixels", int), mask_blur=arg(args, spec, "mask_blur", int),
        inpainting_fill=arg(args, spec, "fill", _fill), directions=arg(args, spec, "direction", _directions))
    _check_common(settings.pixels, settings.mask_blur)
    return settings


def mk2_settings(args: list) -> Mk2Settings:
    """A1111's order: (an info text), pixels, mask_blur, direction, noise_q, color_variation."""
    spec = MK2_ARGS
    settings = Mk2Settings(
        pixels=arg(args, spec, "pixels", int), mask_blur=arg(args, spec, "mask_blur", int),
        directions=arg(args, spec, "direction", _directions), noise_q=arg(args, spec, "noise_q", float),
        color_variation=arg(args, spec, "color_variation", float))
    _check_common(settings.pixels, settings.mask_blur)
    if not 0 <= settings.noise_q <= 4 or not 0 <= settings.color_variation <= 1:
        raise InvalidRequest("script_args", "noise_q must be 0..4 and color_variation 0..1")
    return settings


def _fill(value) -> MaskedContent:
    if isinstance(value, str) and not value.isdigit():
        return MaskedContent(FILLS.index(value.strip().lower()))
    return MaskedContent(int(value))


def _directions(value) -> tuple[str, ...]:
    chosen = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(d, str) and d in DIRECTIONS for d in chosen):
        raise ValueError(value)
    return tuple(d for d in DIRECTIONS if d in chosen)


def _check_common(pixels: int, mask_blur: int) -> None:
    if not 8 <= pixels <= 256:
        raise InvalidRequest("script_args", f"pixels to expand must be 8..256, got {pixels}")
    if not 0 <= mask_blur <= 64:
        raise InvalidRequest("script_args", f"mask blur must be 0..64, got {mask_blur}")


@dataclass(frozen=True)
class Expansion:
    """How many pixels each side grows, so that the grown picture is a multiple of 64 on each axis (the extra
    is shared out in proportion to the requested sides)."""

    left: int
    right: int
    up: int
    down: int

    @classmethod
    def of(cls, size: tuple[int, int], pixels: int, directions: tuple[str, ...]) -> Expansion:
        w, h = size
        left, right, up, down = (pixels if d in directions else 0 for d in DIRECTIONS)
        target_w, target_h = math.ceil((w + left + right) / 64) * 64, math.ceil((h + up + down) / 64) * 64
        if left:
            left = left * (target_w - w) // (left + right)
        if right:
            right = target_w - w - left
        if up:
            up = up * (target_h - h) // (up + down)
        if down:
            down = target_h - h - up
        return cls(left, right, up, down)

    def box(self, size: tuple[int, int], inset: int) -> tuple[int, int, int, int]:
        """The kept picture's rectangle (inclusive corners, as ImageDraw draws them), shrunk by `inset` on the
        grown sides."""
        w, h = size
        return (self.left + (inset if self.left else 0), self.up + (inset if self.up else 0),
                w - self.right - (inset if self.right else 0), h - self.down - (inset if self.down else 0))


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """White (repaint) everywhere but the black `box`; a box turned inside out (a band narrower than the
    growth and its blur) keeps nothing."""
    mask = Image.new("L", size, 255)
    if box[2] >= box[0] and box[3] >= box[1]:
        ImageDraw.Draw(mask).rectangle(box, fill=0)
    return mask


def check_poor_mans(req, settings: PoorMansSettings, limit: SizeLimit) -> None:
    check_smaller_than_tile("pixels to expand", settings.pixels, req)
    _check_grown(req, settings.pixels, settings.directions, limit)


def check_mk2(req, settings: Mk2Settings, limit: SizeLimit) -> None:
    _check_grown(req, settings.pixels, settings.directions, limit)


def _check_grown(req, pixels: int, directions: tuple[str, ...], limit: SizeLimit) -> None:
    size = req.init_image.size
    grow = Expansion.of(size, pixels, directions)
    limit.check((size[0] + grow.left + grow.right, size[1] + grow.up + grow.down), "the outpainted picture")


def run_poor_mans(req, settings: PoorMansSettings, tools: ScriptTools) -> ScriptOutput:
    source = req.init_image.convert("RGB")
    grow = Expansion.of(source.size, settings.pixels, settings.directions)
    size = (source.width + grow.left + grow.right, source.height + grow.up + grow.down)
    picture = Image.new("RGB", size)
    picture.paste(source, (grow.left, grow.up))
    blur = settings.mask_blur
    grids = [tile_grid.split(image, req.width, req.height, settings.pixels)
             for image in (picture, _mask(size, grow.box(size, blur * 2)), _mask(size, grow.box(size, blur // 2)))]
    border = [(x, y) for x, y, _ in grids[0].tiles()
              if not (x >= grow.left and x + req.width <= size[0] - grow.right and y >= grow.up
                      and y + req.height <= size[1] - grow.down)]
    tile_req = dataclasses.replace(req, mask_blur=blur * 2, mask_blur_x=None, mask_blur_y=None,
                                   inpainting_fill=settings.inpainting_fill, inpaint_full_res=False, n_iter=1,
                                   batch_size=1, save_images=False, script=None)
    out, seed, done = ScriptOutput(), req.seed, {}
    masks = {(x, y): (m, lm) for (x, y, m), (_, _, lm) in zip(grids[1].tiles(), grids[2].tiles(), strict=True)}
    tiles = {(x, y): t for x, y, t in grids[0].tiles()}
    for number, (x, y) in enumerate(border, 1):
        tools.report(f"{POOR_MANS}: tile {number} of {len(border)}")
        mask, latent_mask = masks[(x, y)]
        result = tools.process(dataclasses.replace(tile_req, init_image=tiles[(x, y)], mask=mask,
                                                   latent_mask=latent_mask, seed=seed))
        if not result.images:
            out.interrupted = True
            break
        out.infotext = out.infotext or result.infotexts[0]
        done[(x, y)] = result.images[0]
        seed = result.seeds[0] + 1
        if result.interrupted:
            out.interrupted = True
            break
    out.images = [tile_grid.combine(grids[0].map(lambda x, y, tile: done.get((x, y), tile)))]
    out.seeds = [req.seed]
    return out


def run_mk2(req, settings: Mk2Settings, tools: ScriptTools) -> ScriptOutput:
    source = req.init_image.convert("RGB")
    grow = Expansion.of(source.size, settings.pixels, settings.directions)
    blur_x = settings.mask_blur if grow.left or grow.right else 0
    blur_y = settings.mask_blur if grow.up or grow.down else 0
    base = dataclasses.replace(req, mask_blur_x=blur_x * 4, mask_blur_y=blur_y * 4, mask_blur=blur_x * 4,
                               inpainting_fill=MaskedContent.ORIGINAL, inpaint_full_res=False, n_iter=1,
                               batch_size=1, save_images=False, script=None)
    out = ScriptOutput()
    steps = [(side, amount) for side, amount in zip(DIRECTIONS, (grow.left, grow.right, grow.up, grow.down),
                                                    strict=True) if amount]
    for n in range(req.batch_size):
        picture = source
        for number, (side, amount) in enumerate(steps, 1):
            tools.report(f"{MK2}: {side} ({number} of {len(steps)}), image {n + 1} of {req.batch_size}")
            picture, result = _mk2_grow(picture, side, amount, (blur_x, blur_y), settings,
                                        dataclasses.replace(base, seed=req.seed + n), tools)
            out.infotext = out.infotext or (result.infotexts[0] if result.infotexts else "")
            if result.interrupted or not result.images:
                out.interrupted = True
                break
        out.images.append(picture)
        out.seeds.append(req.seed + n)
        if out.interrupted:
            break
    if not out.interrupted:  # A1111 runs every batch (n_iter) with the same seeds: the same pictures again
        out.images, out.seeds = out.images * req.n_iter, out.seeds * req.n_iter
    return out


def _mk2_grow(picture: Image.Image, side: str, amount: int, blurs: tuple[int, int], settings: Mk2Settings, req,
              tools: ScriptTools):
    """One direction: grow, fill the new strip with matched noise, inpaint a band reaching into the picture."""
    horizontal = side in ("left", "right")
    grown = (picture.width + amount, picture.height) if horizontal else (picture.width, picture.height + amount)
    canvas_size = (math.ceil(grown[0] / 64) * 64, math.ceil(grown[1] / 64) * 64)
    canvas = Image.new("RGB", canvas_size)
    canvas.paste(picture, (amount if side == "left" else 0, amount if side == "up" else 0))
    blur_x, blur_y = blurs
    mask = _mask(canvas_size, _mk2_box(side, amount, canvas_size, grown, blur_x, blur_y))
    noised = matched_noise(np.asarray(canvas) / 255.0, np.asarray(mask.convert("RGB")) / 255.0,
                           settings.noise_q, settings.color_variation)
    filled = Image.fromarray(np.clip(noised * 255.0, 0, 255).astype(np.uint8), "RGB")
    # at most the request's size across the growth; whole latents (A1111 would fail on a ragged size)
    band_w = min(req.width, grown[0]) // 8 * 8 if horizontal else canvas_size[0]
    band_h = canvas_size[1] if horizontal else min(req.height, grown[1]) // 8 * 8
    crop = (0 if side == "left" else canvas_size[0] - band_w, 0 if side == "up" else canvas_size[1] - band_h)
    crop = (*crop, crop[0] + band_w, crop[1] + band_h)
    band_mask = mask.crop(crop)
    latent_mask = _mask((band_w, band_h), _mk2_box(side, amount, (band_w, band_h), grown, blur_x * 2, blur_y * 2))
    result = tools.process(dataclasses.replace(req, width=band_w, height=band_h, init_image=filled.crop(crop),
                                               mask=band_mask, latent_mask=latent_mask))
    if result.images:
        image = result.images[0]
        filled.paste(image, (0 if side == "left" else filled.width - image.width,
                             0 if side == "up" else filled.height - image.height))
    return filled.crop((0, 0, *grown)), result


def _mk2_box(side: str, amount: int, size: tuple[int, int], grown: tuple[int, int], inset_x: int, inset_y: int):
    """mk2's kept rectangle: `amount` plus the inset in from the grown side; the far corner is the grown
    picture's size on the sides that do not grow (A1111 draws it so, even past a cropped band)."""
    w, h = size
    return (amount + inset_x if side == "left" else 0, amount + inset_y if side == "up" else 0,
            w - amount - inset_x if side == "right" else grown[0], h - amount - inset_y if side == "down" else grown[1])
