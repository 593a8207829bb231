"""The generation tabs: txt2img, img2img and Inpaint share controls, outputs and buttons; each adds its own."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image

from backend.errors import BackendError, InvalidRequest
from backend.generation import image_ops
from backend.generation.requests import SAME_CHECKPOINT, GenerationRequest, MaskedContent, ResizeMode
from backend.samplers import SAMPLERS, SCHEDULES
from backend.options import request_fields as option_fields
from ui.context import UiContext
from ui.controlnet import PASTED, build_controlnet, control_units, widget_name
from ui.editor import editor_image_and_mask
from ui.extra_networks import build_extra_networks
from ui.scripts import build_scripts, script_choice, script_inputs
from ui.generation_controls import (SAME_SAMPLER, SAME_SCHEDULER, Controls, Outputs, build_controls, build_outputs,
                                    fields_from_infotext,
                                    option_overrides, request_fields, run_job, unapplied_keys)

RESIZE_MODES = ["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"]
MASKED_CONTENT = ["fill", "original", "latent noise", "latent nothing"]
INPAINT_AREAS = ["Whole picture", "Only masked"]
# A1111's img2img modes that paint on the picture: the strokes are the mask (Inpaint), the mask and the colours
# (Inpaint sketch), or only the colours (Sketch: img2img of the painted picture)
PAINT_MODES = ["Inpaint", "Inpaint sketch", "Sketch"]
SKETCH_COLOURS = ["#ffffff", "#000000", "#ff0000", "#00a000", "#0050ff", "#ffd000"]


@dataclass
class Tab:
    name: str
    controls: Controls
    outputs: Outputs
    extra: dict = field(default_factory=dict)  # tab-specific widgets by name
    generate: gr.Button | None = None
    interrupt: gr.Button | None = None
    skip: gr.Button | None = None
    paste: gr.Button | None = None
    send_to_img2img: gr.Button | None = None
    send_to_inpaint: gr.Button | None = None
    send_to_extras: gr.Button | None = None
    scripts: dict = field(default_factory=dict)  # the Script dropdown and its scripts' controls


def build_tab(ctx: UiContext, name: str, top_bar: dict) -> Tab:
    with gr.Row():
        with gr.Column(scale=3):
            images = _build_images(name)  # first, so the picture and the results are in view together
            controls = build_controls(name)
            build_extra_networks(ctx, name, top_bar["checkpoint"])
            extra = {**images, **_build_extra(name, ctx)}
            scripts = build_scripts(ctx, name) if name in ("txt2img", "img2img") else {}
        with gr.Column(scale=2):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{name}_generate")
                interrupt = gr.Button("Interrupt", variant="stop", visible=False, elem_id=f"{name}_interrupt")
                skip = gr.Button("Skip", visible=False, elem_id=f"{name}_skip")
                paste = gr.Button("↙", elem_id=f"{name}_paste", min_width=40)
            outputs = build_outputs(name, ctx.local_only)
            with gr.Row():
                to_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{name}_send_to_img2img")
                to_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{name}_send_to_inpaint")
                to_extras = gr.Button("Send to extras", size="sm", elem_id=f"{name}_send_to_extras")
    tab = Tab(name, controls, outputs, extra, generate, interrupt, skip, paste, to_img2img, to_inpaint, to_extras,
              scripts)
    _wire(ctx, tab, top_bar)
    return tab


def _build_images(name: str) -> dict:
    if name == "img2img":
        # RGBA, as A1111: the backend lays transparency over img2img_background_color
        return {"init_image": gr.Image(label="Image for img2img", type="pil", format="png", elem_id="img2img_image",
                                       image_mode="RGBA", height=300)}
    if name == "inpaint":
        return {"editor": gr.ImageEditor(label="Image (paint the area to repaint; colours count in the sketch modes)",
                                         type="pil", format="png", elem_id="inpaint_editor",
                                         brush=gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults"),
                                         height=340, layers=False)}
    return {}


def _build_extra(name: str, ctx: UiContext) -> dict:
    extra: dict = {}
    if name == "txt2img":
        with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
            extra["enable_hr"] = gr.Checkbox(label="Hires. fix", elem_id="txt2img_enable_hr")
            with gr.Row():
                extra["hr_upscaler"] = gr.Dropdown(ctx.service.upscaler_names(), value="Latent", label="Upscaler",
                                                   elem_id="txt2img_hr_upscaler")
                extra["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                          elem_id="txt2img_hires_steps")
                extra["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                                        elem_id="txt2img_denoising_strength")
            with gr.Row():
                extra["hr_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by",
                                              elem_id="txt2img_hr_scale")
                extra["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                                 elem_id="txt2img_hr_resize_x")
                extra["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                                 elem_id="txt2img_hr_resize_y")
            with gr.Row():
                extra["hr_checkpoint"] = gr.Dropdown([SAME_CHECKPOINT, *ctx.checkpoint_titles()], value=SAME_CHECKPOINT,
                                                     label="Hires checkpoint", allow_custom_value=True,
                                                     elem_id="txt2img_hr_checkpoint")
                extra["hr_sampler"] = gr.Dropdown([SAME_SAMPLER, *(s.name for s in SAMPLERS)], value=SAME_SAMPLER,
                                                  label="Hires sampling method", elem_id="txt2img_hr_sampler")
                extra["hr_scheduler"] = gr.Dropdown([SAME_SCHEDULER, *SCHEDULES], value=SAME_SCHEDULER,
                                                    label="Hires schedule type", elem_id="txt2img_hr_scheduler")
            with gr.Row():
                extra["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id="txt2img_hr_prompt",
                                                placeholder="Empty: the first pass's prompt")
                extra["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2,
                                                         elem_id="txt2img_hr_neg_prompt",
                                                         placeholder="Empty: the first pass's negative prompt")
    if name in ("txt2img", "img2img"):
        with gr.Accordion("Refiner", open=False, elem_id=f"{name}_refiner"):
            with gr.Row():
                extra["refiner_enable"] = gr.Checkbox(False, label="Enable refiner", elem_id=f"{name}_refiner_enable")
                extra["refiner_checkpoint"] = gr.Dropdown(ctx.checkpoint_titles(), value=None, label="Checkpoint",
                                                          allow_custom_value=True,
                                                          elem_id=f"{name}_refiner_checkpoint")
                extra["refiner_switch_at"] = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                                       elem_id=f"{name}_refiner_switch_at")
    extra.update(build_controlnet(ctx, name))  # in every generation tab, as the extension's accordion
    if name == "inpaint":
        with gr.Row():
            extra["paint_mode"] = gr.Radio(PAINT_MODES, value="Inpaint", label="Mode", elem_id="inpaint_paint_mode")
            extra["mask_alpha"] = gr.Slider(0, 100, value=0, step=1, label="Mask transparency (Inpaint sketch)",
                                            elem_id="inpaint_mask_alpha")
        extra["mask_upload"] = gr.Image(label="Or upload a mask (white = repaint)", type="pil", format="png",
                                        elem_id="inpaint_mask_upload", height=160)
        with gr.Row():
            extra["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="inpaint_mask_blur")
            extra["invert"] = gr.Checkbox(label="Invert mask", elem_id="inpaint_invert")
        extra["masked_content"] = gr.Radio(MASKED_CONTENT, value="original", label="Masked content",
                                           elem_id="inpaint_masked_content")
        with gr.Row():
            extra["area"] = gr.Radio(INPAINT_AREAS, value="Whole picture", label="Inpaint area",
                                     elem_id="inpaint_area")
            extra["padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                         elem_id="inpaint_padding")
    if name == "img2img" and ctx.local_only:  # shown only where the service offers server folders
        with gr.Accordion("Batch (folders on this machine)", open=False, elem_id="img2img_batch"):
            with gr.Row():
                extra["batch_input_dir"] = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                extra["batch_output_dir"] = gr.Textbox(label="Output directory (empty: img2img's outputs)",
                                                       elem_id="img2img_batch_output_dir")
                extra["batch_mask_dir"] = gr.Textbox(label="Inpaint batch mask directory (optional)",
                                                     elem_id="img2img_batch_mask_dir")
            extra["batch_generate"] = gr.Button("Generate batch", elem_id="img2img_batch_generate")
    if name in ("img2img", "inpaint"):
        extra["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                                elem_id=f"{name}_denoising_strength")
        extra["resize_mode"] = gr.Radio(RESIZE_MODES, value="Just resize", label="Resize mode",
                                        elem_id=f"{name}_resize_mode")
    return extra


def make_request(tab: Tab, values: dict, top: dict, options: dict | None = None,
                 find_script=None, for_batch: bool = False) -> GenerationRequest:
    """Widget values of `tab` (and the top bar) -> a backend request. Settings come from `options` (the
    Settings tab), unless a pasted infotext overrides them; `find_script(title, args, tab)` gives the chosen
    script."""
    options = {**(options or {}), **option_overrides(values[tab.controls.override_settings] or [])}
    fields = option_fields(options)
    fields.update(request_fields(values, tab.controls))
    fields["save_images"] = bool(options.get("samples_save", True))  # "Always save all generated images"
    fields.update(checkpoint=values[top["checkpoint"]] or None, vae=values[top["vae"]])
    extra = tab.extra
    if tab.name == "txt2img" and values[extra["enable_hr"]]:
        fields.update(enable_hr=True, hr_upscaler=values[extra["hr_upscaler"]],
                      hr_second_pass_steps=int(values[extra["hr_second_pass_steps"]]),
                      denoising_strength=float(values[extra["denoising_strength"]]),
                      hr_scale=float(values[extra["hr_scale"]]), hr_resize_x=int(values[extra["hr_resize_x"]]),
                      hr_resize_y=int(values[extra["hr_resize_y"]]),
                      hr_checkpoint=_unless(values[extra["hr_checkpoint"]], SAME_CHECKPOINT),
                      hr_sampler_name=_unless(values[extra["hr_sampler"]], SAME_SAMPLER),
                      hr_scheduler=_unless(values[extra["hr_scheduler"]], SAME_SCHEDULER),
                      hr_prompt=values[extra["hr_prompt"]] or "",
                      hr_negative_prompt=values[extra["hr_negative_prompt"]] or "")
    if "refiner_enable" in extra and values[extra["refiner_enable"]]:
        if not values[extra["refiner_checkpoint"]]:
            raise InvalidRequest("refiner_checkpoint", "choose the refiner's checkpoint (or untick the refiner)")
        fields.update(refiner_checkpoint=values[extra["refiner_checkpoint"]],
                      refiner_switch_at=float(values[extra["refiner_switch_at"]]))
    if tab.name == "img2img":
        fields.update(init_image=values[extra["init_image"]])
    if tab.name == "inpaint":
        image, mask = painted_image_and_mask(values[extra["editor"]], values[extra["mask_upload"]],
                                             values[extra["paint_mode"]], float(values[extra["mask_alpha"]]),
                                             int(values[extra["mask_blur"]]))
        fields.update(init_image=image, mask=mask, mask_blur=int(values[extra["mask_blur"]]),
                      inpainting_mask_invert=bool(values[extra["invert"]]),
                      inpainting_fill=MaskedContent(MASKED_CONTENT.index(values[extra["masked_content"]])),
                      inpaint_full_res=values[extra["area"]] == "Only masked",
                      inpaint_full_res_padding=int(values[extra["padding"]]))
    if tab.name in ("img2img", "inpaint"):
        if fields["init_image"] is None and not for_batch:  # a folder batch brings its own pictures
            raise InvalidRequest("image", "upload an image first")
        fields.update(denoising_strength=float(values[extra["denoising_strength"]]),
                      resize_mode=ResizeMode(RESIZE_MODES.index(values[extra["resize_mode"]])))
    if widget_name(0, "enabled") in extra:
        fields["control_units"] = control_units(values, extra)
    chosen = script_choice(values, tab.scripts) if tab.scripts else None
    if chosen is not None:
        fields["script"] = find_script(*chosen, tab.name)
    return GenerationRequest(**fields)


def _unless(value: str | None, same: str) -> str | None:
    """A hires choice, or None for "use the first pass's"."""
    return None if not value or value == same else value


def painted_image_and_mask(editor: dict | None, uploaded_mask: Image.Image | None, mode: str, mask_alpha: float,
                           mask_blur: int):
    """The Inpaint tab's picture and mask for its mode: Inpaint (strokes or the uploaded mask are the mask),
    Inpaint sketch (A1111's: the coloured strokes too), Sketch (img2img of the painted picture, no mask)."""
    if mode == "Inpaint" or not editor or editor.get("background") is None:
        return editor_image_and_mask(editor, uploaded_mask)
    original = editor["background"].convert("RGB")
    sketched = (editor.get("composite") or original).convert("RGB")
    if mode == "Sketch":
        return sketched, None
    return image_ops.inpaint_sketch(original, sketched, mask_alpha, mask_blur)


def _wire(ctx: UiContext, tab: Tab, top: dict) -> None:
    scripts = script_inputs(tab.scripts) if tab.scripts else set()
    widgets = {w for w in tab.extra.values() if not isinstance(w, gr.Button)}
    inputs = tab.controls.all() | widgets | scripts | {top["checkpoint"], top["vae"]}

    def on_generate(values: dict, request: gr.Request):
        try:
            job_request = make_request(tab, values, top, ctx.service.get_options(), ctx.service.script)
        except BackendError as err:
            yield {tab.outputs.error: f"**Error:** {err}"}
            return
        yield from run_job(ctx, job_request, tab.outputs, ctx.owner(request))

    def show_running():
        return gr.update(visible=False), gr.update(visible=True), gr.update(visible=True)

    def show_idle():
        return gr.update(visible=True), gr.update(visible=False), gr.update(visible=False)

    buttons = [tab.generate, tab.interrupt, tab.skip]
    tab.generate.click(show_running, outputs=buttons).then(
        on_generate, inputs=inputs, outputs=tab.outputs.all(), api_name=f"{tab.name}_generate",
        concurrency_limit=None).then(show_idle, outputs=buttons)
    if "batch_generate" in tab.extra:
        def on_batch(values: dict, request: gr.Request):
            extra = tab.extra
            try:
                job_request = make_request(tab, {**values, extra["init_image"]: None}, top,
                                           ctx.service.get_options(), ctx.service.script, for_batch=True)
                job_request = ctx.service.img2img_batch(job_request, values[extra["batch_input_dir"]] or "",
                                                        values[extra["batch_output_dir"]] or "",
                                                        values[extra["batch_mask_dir"]] or "")
            except BackendError as err:
                yield {tab.outputs.error: f"**Error:** {err}"}
                return
            yield from run_job(ctx, job_request, tab.outputs, ctx.owner(request))

        tab.extra["batch_generate"].click(show_running, outputs=buttons).then(
            on_batch, inputs=inputs, outputs=tab.outputs.all(), api_name="img2img_batch",
            concurrency_limit=None).then(show_idle, outputs=buttons)
    _wire_styles(ctx, tab)
    _wire_gallery_buttons(ctx, tab)
    tab.controls.prompt.change(lambda text: token_counter_html(ctx.service.prompt_token_count(text or "")),
                               inputs=tab.controls.prompt, outputs=tab.controls.token_counter, show_progress="hidden")
    def on_interrupt(job_id, request: gr.Request):
        if job_id:  # only this browser's (or account's) own job, whatever id a crafted call names
            ctx.service.interrupt(job_id, owner=ctx.owner(request))

    def on_skip(job_id, request: gr.Request):
        if job_id:
            ctx.service.skip(job_id, owner=ctx.owner(request))

    tab.interrupt.click(on_interrupt, inputs=tab.outputs.job_id, outputs=None)
    tab.skip.click(on_skip, inputs=tab.outputs.job_id, outputs=None)
    tab.controls.reuse_seed_button.click(lambda seeds: seeds[0] if seeds else -1, inputs=tab.outputs.seeds,
                                         outputs=tab.controls.seed)
    def on_paste(text):
        unapplied = unapplied_keys(text)
        if unapplied:
            gr.Warning(f"Not applied (no such field here): {', '.join(unapplied)}")
        return fill_updates(tab, fields_from_infotext(text))

    tab.paste.click(on_paste, inputs=tab.controls.prompt,
                    outputs=fill_targets(tab))


def _gallery_files(gallery) -> list[str]:
    """File paths of a gallery value (a list of (file, caption) items)."""
    files = []
    for item in gallery or []:
        image = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(image, dict):
            image = image.get("path") or image.get("image", {}).get("path")
        if isinstance(image, str):
            files.append(image)
    return files


def _wire_gallery_buttons(ctx: UiContext, tab: Tab) -> None:
    """A1111's buttons under the results: open the outputs folder (only when the server is this machine's
    alone), save the selected image, or all of them as a zip, as downloads."""
    open_folder, save, zip_all, download = tab.outputs.gallery_buttons

    def on_open(request: gr.Request):
        owner = ctx.owner(request)
        try:
            opened = ctx.service.open_outputs_folder(tab.name, owner)
        except BackendError as err:
            raise gr.Error(str(err)) from None
        if opened is None:
            gr.Info(f"The images are in {ctx.service.outputs_folder(tab.name, owner)}")

    def on_save(gallery, index):
        files = _gallery_files(gallery)
        if not files:
            return gr.update(visible=False)
        return gr.update(value=files[index if index is not None and index < len(files) else -1], visible=True)

    def on_zip(gallery):
        files = _gallery_files(gallery)
        if not files:
            return gr.update(visible=False)
        target = ctx.new_scratch_file("images.zip")
        with zipfile.ZipFile(target, "w") as archive:
            for i, name in enumerate(files):
                archive.write(name, arcname=f"{i:03d}-{Path(name).name}")
        return gr.update(value=str(target), visible=True)

    open_folder.click(on_open, outputs=None)
    save.click(on_save, inputs=[tab.outputs.gallery, tab.outputs.selected], outputs=download)
    zip_all.click(on_zip, inputs=tab.outputs.gallery, outputs=download)


def _wire_styles(ctx: UiContext, tab: Tab) -> None:
    """A1111's styles: pick styles (applied when generating), apply them into the prompt boxes, save the
    current prompts as a style."""
    c = tab.controls
    apply_button, name_box, save_button = c.style_widgets

    def choices():
        return [s.name for s in ctx.service.prompt_styles()]

    def on_apply(prompt, negative, names):
        try:
            prompt, negative = ctx.service.apply_styles(prompt or "", negative or "", list(names or []))
        except BackendError as err:
            gr.Warning(str(err))
            return gr.update(), gr.update(), gr.update()
        return prompt, negative, gr.update(value=[])

    def on_save(name, prompt, negative):
        try:
            ctx.service.save_style(name or "", prompt or "", negative or "")
        except BackendError as err:
            gr.Warning(str(err))
        return gr.update(choices=choices()), ""

    c.styles.focus(lambda: gr.update(choices=choices()), outputs=c.styles)
    apply_button.click(on_apply, inputs=[c.prompt, c.negative_prompt, c.styles],
                       outputs=[c.prompt, c.negative_prompt, c.styles])
    save_button.click(on_save, inputs=[name_box, c.prompt, c.negative_prompt], outputs=[c.styles, name_box])


def token_counter_html(counts: tuple[int, int]) -> str:
    used, target = counts
    return f"<span title='tokens / the 75-token chunks they fill'>{used}/{target}</span>"


def _fillable(tab: Tab) -> list[tuple[str, gr.components.Component]]:
    """(name, widget) of every field infotext can fill on `tab`, in a fixed order."""
    extras = ("denoising_strength", "mask_blur", "enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_scale",
              "hr_resize_x", "hr_resize_y", "hr_checkpoint", "hr_sampler", "hr_scheduler", "hr_prompt",
              "hr_negative_prompt", "refiner_enable", "refiner_checkpoint", "refiner_switch_at")
    named = list(vars(tab.controls).items()) + [(n, tab.extra.get(n)) for n in extras]
    named += [(n, w) for n, w in tab.extra.items() if n.startswith("cn") and n.split("_", 1)[1] in (
        "enabled", *PASTED)]
    return [(name, w) for name, w in named
            if isinstance(w, gr.components.Component) and not isinstance(w, (gr.Button, gr.HTML))]


def fill_targets(tab: Tab) -> list:
    return [widget for _, widget in _fillable(tab)]


def fill_updates(tab: Tab, values: dict) -> list:
    """An update per fill target: the parsed value where the infotext had one, unchanged otherwise."""
    return [_update(name, values[name]) if name in values else gr.update() for name, _ in _fillable(tab)]


def _update(name: str, value):
    if name == "override_settings":  # its choices are what the infotext carries
        return gr.update(choices=value, value=value)
    if name == "network_hashes":  # a gr.State takes the value itself
        return value
    return gr.update(value=value)
