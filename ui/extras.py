"""Extras tab: upscale a picture by a factor or to a size, with a second upscaler blended in (A1111's Extras)."""

from __future__ import annotations

import gradio as gr

from backend.errors import BackendError
from backend.upscale.extras import ExtrasRequest
from ui.context import UiContext

RESIZE_MODES = ["Scale by", "Scale to"]


def build_extras_tab(ctx: UiContext) -> gr.Image:
    """The tab's widgets and handler; returns its image input (other tabs send pictures to it)."""
    upscalers = [n for n in ctx.service.upscaler_names() if not n.startswith("Latent")]
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Source", type="pil", format="png", elem_id="extras_image", height=320)
            mode = gr.Radio(RESIZE_MODES, value="Scale by", label="Resize", elem_id="extras_resize_mode")
            with gr.Row():
                scale = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                width = gr.Slider(64, 4096, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w")
                height = gr.Slider(64, 4096, value=512, step=8, label="Height", elem_id="extras_upscaling_resize_h")
                crop = gr.Checkbox(value=True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(upscalers, value="Lanczos", label="Upscaler 1", elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(upscalers, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            error = gr.Markdown(elem_id="extras_error", elem_classes=["error-box"])
            result = gr.Image(label="Result", interactive=False, type="pil", format="png", elem_id="extras_result")
            info = gr.Textbox(label="Info", interactive=False, elem_id="extras_info")

    def on_run(picture, mode, scale, width, height, crop, upscaler_1, upscaler_2, visibility):
        if picture is None:
            return "**Error:** upload an image first", None, ""
        req = ExtrasRequest(resize_mode=RESIZE_MODES.index(mode), upscaling_resize=float(scale),
                            upscaling_resize_w=int(width), upscaling_resize_h=int(height), upscaling_crop=bool(crop),
                            upscaler_1=upscaler_1, upscaler_2=upscaler_2, upscaler_2_visibility=float(visibility))
        try:
            done = ctx.service.extras([picture], req, save=True)
        except BackendError as err:
            return f"**Error:** {err}", None, ""
        warnings = "".join(f"**Warning:** {w}  \n" for w in done.warnings)
        return warnings, done.images[0], done.infotexts[0]

    run.click(on_run, inputs=[image, mode, scale, width, height, crop, upscaler_1, upscaler_2, visibility],
              outputs=[error, result, info], api_name="extras_generate")
    return image
