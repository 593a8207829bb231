"""Pixel-space helpers for img2img and inpainting: resize modes, masks, masked-area fill, crop regions."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy.ndimage import gaussian_filter

from backend.errors import InvalidRequest
from backend.generation.requests import ResizeMode

LANCZOS = Image.Resampling.LANCZOS


def resize_image(image: Image.Image, width: int, height: int, mode: ResizeMode) -> Image.Image:
    """A1111's resize modes. LATENT_UPSCALE resizes in latent space later, so here it is a plain resize."""
    image = image.convert("RGB")
    if mode in (ResizeMode.JUST_RESIZE, ResizeMode.LATENT_UPSCALE):
        return image.resize((width, height), LANCZOS)
    if mode == ResizeMode.CROP_AND_RESIZE:
        scale = max(width / image.width, height / image.height)
        scaled = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                              LANCZOS)
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    return _resize_and_fill(image, width, height)


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside, centre, and fill the margins by stretching the edge rows/columns outwards."""
    scale = min(width / image.width, height / image.height)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    fitted = image.resize((w, h), LANCZOS)
    canvas = Image.new("RGB", (width, height))
    left, top = (width - w) // 2, (height - h) // 2
    canvas.paste(fitted, (left, top))
    if top > 0:
        canvas.paste(fitted.crop((0, 0, w, 1)).resize((w, top)), (left, 0))
        canvas.paste(fitted.crop((0, h - 1, w, h)).resize((w, height - top - h)), (left, top + h))
    if left > 0:
        canvas.paste(fitted.crop((0, 0, 1, h)).resize((left, h)), (0, top))
        canvas.paste(fitted.crop((w - 1, 0, w, h)).resize((width - left - w, h)), (left + w, top))
    return canvas


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
    the image (A1111's "only masked" inpaint area). None if the mask is empty."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1, y1 = max(0, x1 - padding), max(0, y1 - padding)
    x2, y2 = min(mask.width, x2 + padding), min(mask.height, y2 + padding)
    target = width / height
    w, h = x2 - x1, y2 - y1
    if w / h < target:
        x1, x2 = _grow(x1, x2, round(h * target), mask.width)
    else:
        y1, y2 = _grow(y1, y2, round(w / target), mask.height)
    return x1, y1, x2, y2


def _grow(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    size = min(size, limit)
    extra = size - (hi - lo)
    lo = max(0, lo - extra // 2)
    hi = lo + size
    if hi > limit:
        lo, hi = limit - size, limit
    return lo, hi


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Generated pixels where the (blurred) mask is white, the original's everywhere else."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask.convert("L"))


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
