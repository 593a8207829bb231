"""base64 / data: URL images in and out of the API."""

from __future__ import annotations

import base64
import binascii

from PIL import Image

from backend.errors import InvalidRequest
from backend.generation.image_ops import decode_image
from backend.outputs import ImageFormat, encode_image


def decode_b64_image(text: str, field: str, max_pixels: int) -> Image.Image:
    """A base64 string or a `data:image/...;base64,` URL -> image; InvalidRequest naming the field otherwise."""
    if not isinstance(text, str) or not text:
        raise InvalidRequest(field, "expected a base64-encoded image")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidRequest(field, "is not valid base64") from err
    return decode_image(data, field, max_pixels)


def encode_png(image: Image.Image, infotext: str | None, fmt: ImageFormat = ImageFormat()) -> str:
    """base64 of the picture in `fmt` (A1111's API answers in samples_format), the infotext inside."""
    return base64.b64encode(encode_image(image, {"parameters": infotext} if infotext else {}, fmt)).decode("ascii")
