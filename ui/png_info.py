"""PNG Info tab: read generation parameters from any image and send them to a generation tab."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from backend import infotext
from backend.outputs import read_infotext


def read_parameters(image: Image.Image | None) -> tuple[str, dict]:
    """(text shown to the user, parsed parameters)."""
    if image is None:
        return "", {}
    text = read_infotext(image)
    if not text:
        return "This image has no generation parameters.", {}
    return text, infotext.parse(text)


def build_png_info_tab():
    with gr.Row():
        image = gr.Image(label="Source", type="pil", image_mode=None, format="png", elem_id="pnginfo_image",
                         height=360)
        with gr.Column():
            text = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="pnginfo_parameters")
            with gr.Row():
                buttons = {name: gr.Button(f"Send to {name}", elem_id=f"pnginfo_send_to_{name}")
                           for name in ("txt2img", "img2img", "inpaint")}
    image.change(lambda img: read_parameters(img)[0], inputs=image, outputs=text)
    return image, text, buttons
