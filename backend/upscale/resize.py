"""Upscaling a picture by a factor or to a size with A1111's image upscalers: PIL resampling (None, Lanczos,
Nearest) or an upscaler model's passes (backend/upscale/models.py). Extras, SD upscale and hires fix use it."""

from __future__ import annotations

from PIL import Image

# Image upscalers without a model: PIL resampling (A1111's None, Lanczos and Nearest)
IMAGE_UPSCALERS = {"None": Image.LANCZOS, "Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}


def image_upscaler_names(models=None) -> list[str]:
    """A1111's upscaler list without the latent modes (None, Lanczos, Nearest, the models of an
    UpscalerLibrary by name): what Extras and SD upscale take."""
    return [*IMAGE_UPSCALERS, *([f.name for f in models.all()] if models else [])]


def upscale_by(image: Image.Image, name: str, scale: float, models=None) -> Image.Image:
    """A1111's Upscaler.upscale: passes of the upscaler (Lanczos/Nearest: a PIL resize by `scale`; a model: its
    own factor, see backend/upscale/models.py) until the image covers int(size * scale) // 8 * 8, then LANCZOS
    to exactly that."""
    if name not in IMAGE_UPSCALERS:
        return models.upscale(image, name, scale)
    dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
    for _ in range(3):
        if image.width >= dest[0] and image.height >= dest[1]:
            break
        image = image.resize((int(image.width * scale), int(image.height * scale)), IMAGE_UPSCALERS[name])
    if image.size != dest:
        image = image.resize(dest, Image.LANCZOS)
    return image


def upscale_image(image: Image.Image, name: str, width: int, height: int, models=None) -> Image.Image:
    """A1111's resize_image(0, ...): "None" resizes straight to the size with LANCZOS; an upscaler scales by
    the factor that covers the box (`upscale_by`), then LANCZOS to the size."""
    if name == "None":
        return image.resize((width, height), Image.LANCZOS)
    scale = max(width / image.width, height / image.height)
    if scale > 1.0:
        image = upscale_by(image, name, scale, models)
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    return image
