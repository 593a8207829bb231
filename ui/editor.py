"""Gradio's ImageEditor value read as a picture and a painted mask: the Inpaint tab's and ControlNet's inpaint
units' one rule for what the strokes mean."""

from __future__ import annotations

import numpy as np
from PIL import Image


def editor_image_and_mask(editor: dict | None, uploaded_mask: Image.Image | None):
    """ImageEditor value -> (picture, mask). Painted strokes are the mask: opaque pixels of the drawing layers,
    or wherever the composite differs from the background. An uploaded mask takes precedence."""
    if not editor or editor.get("background") is None:
        return None, None
    background = editor["background"].convert("RGB")
    if uploaded_mask is not None:
        return background, uploaded_mask
    painted = np.zeros((background.height, background.width), dtype=bool)
    for layer in editor.get("layers") or []:
        if layer is not None:
            painted |= np.asarray(layer.convert("RGBA").resize(background.size))[..., 3] > 0
    composite = editor.get("composite")
    if composite is not None:
        drawn = np.asarray(composite.convert("RGB").resize(background.size), dtype=np.int16)
        painted |= np.abs(drawn - np.asarray(background, dtype=np.int16)).max(axis=-1) > 8
    return background, Image.fromarray(np.where(painted, 255, 0).astype(np.uint8))
