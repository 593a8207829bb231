"""Extras tab: upscale a picture by a factor or to a size, with a second upscaler blended in (A1111's Extras):
a single image, a batch of uploaded files, or (when served to this machine only) every picture in a folder."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from backend.errors import BackendError
from backend.upscale.extras import ExtrasRequest, open_picture
from ui.context import UiContext

RESIZE_MODES = ["Scale by", "Scale to"]
SINGLE, BATCH, FOLDER = "single", "batch", "folder"


def build_extras_tab(ctx: UiContext) -> gr.Image:
    """The tab's widgets and handler; returns its image input (other tabs send pictures to it)."""
    upscalers = ctx.service.image_upscaler_names()
    mode_state = gr.State(SINGLE)
    with gr.Row():
        with gr.Column():
            with gr.Tabs(elem_id="extras_mode"):
                with gr.Tab("Single Image", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(label="Source", type="pil", format="png", elem_id="extras_image", height=320)
                with gr.Tab("Batch Process", elem_id="extras_batch_tab") as batch_tab:
                    files = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                    elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", elem_id="extras_folder_tab",
                            visible=ctx.local_only) as folder_tab:
                    input_dir = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir",
                                           placeholder="A folder on this machine")
                    output_dir = gr.Textbox(label="Output directory", elem_id="extras_batch_output_dir",
                                            placeholder="Leave blank to save to outputs/extras-images")
                    show = gr.Checkbox(value=True, label="Show result images", elem_id="extras_show_results")
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
            gallery = gr.Gallery(label="Results", format="png", elem_id="extras_gallery", columns=4, height=300)
            info = gr.Textbox(label="Info", interactive=False, elem_id="extras_info")

    for tab, name in ((single_tab, SINGLE), (batch_tab, BATCH), (folder_tab, FOLDER)):
        tab.select(lambda name=name: name, outputs=mode_state)

    def on_run(which, picture, uploads, in_dir, out_dir, show_results, mode, scale, width, height, crop,
               upscaler_1, upscaler_2, visibility, request: gr.Request):
        req = ExtrasRequest(resize_mode=RESIZE_MODES.index(mode), upscaling_resize=float(scale),
                            upscaling_resize_w=int(width), upscaling_resize_h=int(height), upscaling_crop=bool(crop),
                            upscaler_1=upscaler_1, upscaler_2=upscaler_2, upscaler_2_visibility=float(visibility))
        owner = ctx.owner(request)
        try:
            if which == SINGLE:
                if picture is None:
                    return "**Error:** upload an image first", None, [], ""
                done = ctx.service.extras([picture], req, save=True, owner=owner)
            elif which == BATCH:
                if not uploads:
                    return "**Error:** add the pictures to process first", None, [], ""
                limit = ctx.service.settings.limits.max_upload_pixels
                pictures = [open_picture(Path(_upload_path(f)), limit) for f in uploads]
                done = ctx.service.extras(pictures, req, save=True, owner=owner)
            else:
                done = ctx.service.extras_from_folder(in_dir or "", out_dir or "", req, keep_images=bool(show_results),
                                                      owner=owner)
        except BackendError as err:
            return f"**Error:** {err}", None, [], ""
        except (OSError, Image.DecompressionBombError) as err:
            return f"**Error:** cannot read that picture ({err.strerror or type(err).__name__})", None, [], ""
        warnings = "".join(f"**Warning:** {w}  \n" for w in done.warnings)
        if which == SINGLE:
            return warnings, done.images[0], [], done.infotexts[0]
        shown = done.images if which == BATCH or show_results else []
        summary = done.infotexts[0] if done.infotexts else ""
        return warnings, None, shown, f"{done.count} image(s): {summary}"

    run.click(on_run, inputs=[mode_state, image, files, input_dir, output_dir, show, mode, scale, width, height,
                              crop, upscaler_1, upscaler_2, visibility],
              outputs=[error, result, gallery, info], api_name="extras_generate")
    return image


def _upload_path(upload) -> str:
    return upload if isinstance(upload, str) else getattr(upload, "name", upload)
