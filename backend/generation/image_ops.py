"""Pixel-space helpers for img2img and inpainting: resize modes, masks, masked-area fill, crop regions."""

from __future__ import annotations

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy.ndimage import gaussian_filter

from backend.errors import InvalidRequest
from backend.generation.requests import ResizeMode

LANCZOS = Image.Resampling.LANCZOS


Resize = Callable[[Image.Image, int, int], Image.Image]


def lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), LANCZOS)


def resize_image(image: Image.Image, width: int, height: int, mode: ResizeMode, resize: Resize = lanczos) -> Image.Image:
    """A1111's resize modes (images.resize_image), with its integer arithmetic: the fitted side is
    floor-divided, the picture is pasted centred at width // 2 - w // 2, and "fill" stretches the edge into
    the margins as A1111's zero-height (or zero-width) box resize does. `resize` scales (A1111's
    upscaler_for_img2img, else LANCZOS). LATENT_UPSCALE resizes in latent space later: here a plain resize."""
    image = image.convert("RGB")
    if mode in (ResizeMode.JUST_RESIZE, ResizeMode.LATENT_UPSCALE):
        return resize(image, width, height)
    ratio, source_ratio = width / height, image.width / image.height
    # crop fits the picture's short side to the box (covering it); fill fits its long side (inside the box)
    fit_width = ratio > source_ratio if mode == ResizeMode.CROP_AND_RESIZE else ratio < source_ratio
    if fit_width:
        w, h = width, max(1, image.height * width // image.width)
    else:
        w, h = max(1, image.width * height // image.height), height
    fitted = resize(image, w, h)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(fitted, (width // 2 - w // 2, height // 2 - h // 2))
    if mode == ResizeMode.RESIZE_AND_FILL:
        _stretch_edges_into_margins(canvas, fitted, ratio, source_ratio)
    return canvas


def _stretch_edges_into_margins(canvas: Image.Image, fitted: Image.Image, ratio: float, source_ratio: float) -> None:
    width, height, w, h = canvas.width, canvas.height, fitted.width, fitted.height
    if ratio < source_ratio and (margin := height // 2 - h // 2) > 0:
        canvas.paste(fitted.resize((width, margin), Image.BICUBIC, box=(0, 0, width, 0)), (0, 0))
        canvas.paste(fitted.resize((width, margin), Image.BICUBIC, box=(0, h, width, h)), (0, margin + h))
    elif ratio > source_ratio and (margin := width // 2 - w // 2) > 0:
        canvas.paste(fitted.resize((margin, height), Image.BICUBIC, box=(0, 0, 0, height)), (0, 0))
        canvas.paste(fitted.resize((margin, height), Image.BICUBIC, box=(w, 0, w, height)), (margin + w, 0))


def flatten(image: Image.Image, background: str) -> Image.Image:
    """A1111's images.flatten for init pictures: an RGBA picture is laid over `background` (the option
    img2img_background_color); other modes are converted as they are."""
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, background)
        canvas.paste(image, mask=image)
        image = canvas
    return image.convert("RGB")


def prepare_mask(mask: Image.Image, size: tuple[int, int], invert: bool) -> Image.Image:
    """White = repaint. An RGBA mask whose alpha is not fully opaque uses its alpha (> 128)."""
    if mask.mode in ("RGBA", "LA") and mask.getchannel("A").getextrema()[0] < 255:
        mask = mask.getchannel("A").point(lambda a: 255 if a > 128 else 0)
    mask = mask.convert("L")
    if mask.size != size:
        mask = mask.resize(size, LANCZOS)
    return ImageOps.invert(mask) if invert else mask


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """A1111's mask blur, with OpenCV as A1111 calls it: a Gaussian of sigma `blur_x` along rows, then one of
    `blur_y` along columns, each 2 * int(2.5 * sigma + 0.5) + 1 taps wide and rounded to 8 bits in between."""
    array = np.array(mask.convert("L"))
    if blur_x > 0:
        array = cv2.GaussianBlur(array, (2 * int(2.5 * blur_x + 0.5) + 1, 1), blur_x)
    if blur_y > 0:
        array = cv2.GaussianBlur(array, (1, 2 * int(2.5 * blur_y + 0.5) + 1), blur_y)
    return Image.fromarray(array, "L")


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Pre-fill the masked area with colours spread in from around it (A1111's "fill" masked content):
    progressively sharper blurs of the unmasked pixels are layered, so far pixels give a smooth average and
    near ones dominate at the edge."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    keep = 1.0 - np.asarray(mask.convert("L"), dtype=np.float64)[..., None] / 255.0
    result = rgb * keep
    covered = keep.copy()
    for radius in (128, 32, 8, 2, 1):
        weights = _blur(keep, radius)
        colours = _blur(rgb * keep, radius) / np.maximum(weights, 1e-6)
        valid = (weights > 1e-3).astype(np.float64)
        result = result * covered + colours * valid * (1 - covered)
        covered = np.maximum(covered, valid)
    return Image.fromarray(np.clip(result, 0, 255).round().astype(np.uint8))


def _blur(array: np.ndarray, radius: int) -> np.ndarray:
    return gaussian_filter(array, sigma=(radius, radius, 0), mode="nearest")


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The masked area's bounding box plus `padding`, grown to the generation's aspect ratio and clamped to
    the image, with A1111's arithmetic (masking.get_crop_region_v2 and expand_crop_region: the growth is
    truncated to whole pixels and split half before, the rest after). None if the mask is empty."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1, y1 = max(0, x1 - padding), max(0, y1 - padding)
    x2, y2 = min(mask.width, x2 + padding), min(mask.height, y2 + padding)
    target = width / height
    if (x2 - x1) / (y2 - y1) > target:
        y1, y2 = _grow(y1, y2, (x2 - x1) / target, mask.height)
    else:
        x1, x2 = _grow(x1, x2, (y2 - y1) * target, mask.width)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, wanted: float, limit: int) -> tuple[int, int]:
    extra = int(wanted - (hi - lo))
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi > limit:  # shifted back inside, then cut to the image if it is still too long
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Generated pixels where the (blurred) mask is white, the original's everywhere else, blended as A1111's
    apply_overlay does: the original, premultiplied by the inverted mask, alpha-composited over the result."""
    overlay = Image.new("RGBa", original.size)
    overlay.paste(original.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    result = generated.convert("RGBA")
    result.alpha_composite(overlay.convert("RGBA"))
    return result.convert("RGB")


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Uploaded bytes -> a loaded PIL image, or InvalidRequest naming the field (never a crash)."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise InvalidRequest(field, f"image is {image.width}x{image.height}, larger than the configured maximum "
                                        f"of {max_pixels} pixels")
        image.load()
    except InvalidRequest:
        raise
    except Image.DecompressionBombError as err:
        raise InvalidRequest(field, f"image is larger than the configured maximum of {max_pixels} pixels") from err
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for bad data
        raise InvalidRequest(field, f"not a readable image ({type(err).__name__})") from err
    return image


def inpaint_sketch(original: Image.Image, sketched: Image.Image, mask_alpha: float,
                   mask_blur: int) -> tuple[Image.Image, Image.Image]:
    """A1111's Inpaint sketch: the mask is every pixel the strokes changed, dimmed by the mask transparency
    (0..100); the picture to inpaint is the sketch, blurred, over the original through the blurred mask."""
    original, sketched = original.convert("RGB"), sketched.convert("RGB").resize(original.size)
    changed = np.any(np.asarray(sketched) != np.asarray(original), axis=-1)
    mask = Image.fromarray(changed.astype(np.uint8) * 255, "L")
    mask = ImageEnhance.Brightness(mask).enhance(1 - mask_alpha / 100)
    blur = ImageFilter.GaussianBlur(mask_blur)
    return Image.composite(sketched.filter(blur), original, mask.filter(blur)), mask
