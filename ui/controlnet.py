"""The ControlNet accordion of txt2img and img2img, with the extension's unit tabs: a picture (uploaded, or
drawn on a blank canvas), enable, low VRAM, pixel perfect, a preview of the detected map, the control type
filter, preprocessor and model with refresh, weight, start and end, the preprocessor's sliders, control mode
and resize mode. Widgets in, ControlUnits out; pasted infotext fills the units back."""

from __future__ import annotations

import gradio as gr
import numpy as np
from PIL import Image

from backend.control import preprocess, units
from backend.control.images import RESIZE_MODES
from backend.errors import BackendError
from ui.context import UiContext
from ui.editor import editor_image_and_mask

FIELDS = ("enabled", "image", "low_vram", "pixel_perfect", "control_type", "module", "model", "weight",
          "guidance_start", "guidance_end", "processor_res", "threshold_a", "threshold_b", "control_mode",
          "resize_mode")
MAX_UNITS = 10  # the extension's control_net_unit_count slider goes to 10
# what the unit's infotext entry sets, by field
PASTED = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
          "guidance_start", "guidance_end", "pixel_perfect", "control_mode")


def widget_name(index: int, field: str) -> str:
    return f"cn{index}_{field}"


def control_types() -> list[str]:
    return ["All", *sorted({tag for p in preprocess.PREPROCESSORS.values() for tag in p.tags})]


def _modules_for(control_type: str) -> list[str]:
    return [p.name for p in preprocess.sorted_preprocessors()
            if control_type == "All" or control_type in p.tags or p.name == "none"]


def _models_for(ctx: UiContext, control_type: str, refresh: bool = False) -> list[str]:
    models = ctx.service.controlnet_models(refresh)
    return models if control_type == "All" else [m for m in models if m == "None" or control_type.lower() in m.lower()]


def _slider_updates(module: str) -> list:
    """Resolution and the two sliders as the preprocessor shows them (label, range, default)."""
    pre = preprocess.find(module)
    shown = [pre.resolution if pre.resolution_shown else None, pre.slider_1, pre.slider_2]
    return [gr.update(visible=False) if s is None or not s.visible else
            gr.update(visible=True, label=s.label, minimum=s.minimum, maximum=s.maximum, step=s.step, value=s.value)
            for s in shown]


def build_controlnet(ctx: UiContext, tab: str) -> dict:
    widgets: dict = {}
    count = ctx.service.controlnet_unit_count()
    with gr.Accordion("ControlNet", open=False, elem_id=f"{tab}_controlnet"):
        with gr.Tabs():
            for index in range(count):
                with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{tab}_controlnet_unit_{index}"):
                    widgets.update(_build_unit(ctx, tab, index))
    return widgets


def _build_unit(ctx: UiContext, tab: str, i: int) -> dict:
    w = {}
    eid = f"{tab}_cn{i}"
    with gr.Row():
        w["image"] = gr.ImageEditor(label="Control image (upload, or draw on the blank canvas)", type="pil",
                                    format="png", layers=False, height=260, elem_id=f"{eid}_image")
        w["preview"] = gr.Image(label="Preprocessor preview", type="pil", interactive=False, height=260,
                                elem_id=f"{eid}_preview")
    with gr.Row():
        w["enabled"] = gr.Checkbox(False, label="Enable", elem_id=f"{eid}_enable")
        w["low_vram"] = gr.Checkbox(False, label="Low VRAM", elem_id=f"{eid}_low_vram")
        w["pixel_perfect"] = gr.Checkbox(False, label="Pixel Perfect", elem_id=f"{eid}_pixel_perfect")
        w["preview_button"] = gr.Button("Preview the map", size="sm", elem_id=f"{eid}_preview_button")
    w["control_type"] = gr.Radio(control_types(), value="All", label="Control Type", elem_id=f"{eid}_control_type")
    with gr.Row():
        w["module"] = gr.Dropdown(_modules_for("All"), value="none", label="Preprocessor", elem_id=f"{eid}_module")
        w["model"] = gr.Dropdown(_models_for(ctx, "All"), value="None", label="Model", allow_custom_value=True,
                                 elem_id=f"{eid}_model")
        w["refresh"] = gr.Button("🔄", size="sm", min_width=40, elem_id=f"{eid}_refresh")
    with gr.Row():
        w["weight"] = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{eid}_weight")
        w["guidance_start"] = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step",
                                        elem_id=f"{eid}_guidance_start")
        w["guidance_end"] = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step",
                                      elem_id=f"{eid}_guidance_end")
    with gr.Row():
        w["processor_res"] = gr.Slider(64, 2048, value=512, step=8, label="Resolution", visible=False,
                                       elem_id=f"{eid}_processor_res")
        w["threshold_a"] = gr.Slider(0, 1, value=0.5, label="Threshold A", visible=False, elem_id=f"{eid}_threshold_a")
        w["threshold_b"] = gr.Slider(0, 1, value=0.5, label="Threshold B", visible=False, elem_id=f"{eid}_threshold_b")
    w["control_mode"] = gr.Radio(list(units.CONTROL_MODES), value="Balanced", label="Control Mode",
                                 elem_id=f"{eid}_control_mode")
    w["resize_mode"] = gr.Radio(list(RESIZE_MODES), value="Crop and Resize", label="Resize Mode",
                                elem_id=f"{eid}_resize_mode")
    _wire_unit(ctx, w)
    return {widget_name(i, k): v for k, v in w.items()}


def _wire_unit(ctx: UiContext, w: dict) -> None:
    sliders = [w["processor_res"], w["threshold_a"], w["threshold_b"]]

    def on_type(control_type):
        modules = _modules_for(control_type)
        models = _models_for(ctx, control_type)
        default = next((m for m in modules if m != "none"), "none")
        return gr.update(choices=modules, value=default), gr.update(choices=models, value=models[1] if len(
            models) > 1 else "None")

    w["control_type"].input(on_type, inputs=w["control_type"], outputs=[w["module"], w["model"]])
    w["module"].change(_slider_updates, inputs=w["module"], outputs=sliders, show_progress="hidden")
    w["refresh"].click(lambda t: gr.update(choices=_models_for(ctx, t, refresh=True)), inputs=w["control_type"],
                       outputs=w["model"])

    def on_preview(editor, module, res, a, b):
        picture, mask = _editor_picture(editor), None
        if picture is None:
            raise gr.Error("Upload or draw a control image first")
        try:
            if preprocess.find(module).takes_mask and isinstance(editor, dict):
                background, mask = editor_image_and_mask(editor, None)
                picture = background or picture
            return ctx.service.controlnet_detect(module, picture, res, a, b, mask)
        except BackendError as err:
            raise gr.Error(str(err)) from None

    w["preview_button"].click(on_preview, inputs=[w["image"], w["module"], *sliders], outputs=w["preview"])


def _editor_picture(editor) -> Image.Image | None:
    """The editor's picture: its composite (a drawing on the blank canvas is composited on white later)."""
    if not isinstance(editor, dict):
        return editor
    composite = editor.get("composite")
    if composite is None:
        return None
    array = np.asarray(composite.convert("RGBA"))
    if array[:, :, 3].max() == 0:  # nothing uploaded or drawn
        return None
    return composite


def control_units(values: dict, widgets: dict) -> tuple[units.ControlUnit, ...]:
    """The enabled units of the accordion, checked as the API's are."""
    chosen = []
    index = 0
    while widget_name(index, "enabled") in widgets:
        get = lambda field: values[widgets[widget_name(index, field)]]  # noqa: E731, B023
        if get("enabled"):
            fields = {f: get(f) for f in FIELDS if f not in ("image", "control_type")}
            editor = get("image")
            if preprocess.find(fields["module"]).takes_mask and isinstance(editor, dict):
                fields["image"], fields["mask"] = editor_image_and_mask(editor, None)
            else:
                fields["image"] = _editor_picture(editor)
            unit = units.from_fields(fields, f"ControlNet Unit {index}", lambda value, field: value)
            chosen.append(unit)
        index += 1
    return tuple(chosen)


def infotext_values(parsed: dict, full_line: bool, count: int) -> dict:
    """Pasted `ControlNet N` entries -> widget values by name; with a full parameter line, units it does not
    mention are turned off."""
    values = {}
    for index in range(count):
        text = parsed.get(f"ControlNet {index}")
        if text is None:
            if full_line:
                values[widget_name(index, "enabled")] = False
            continue
        try:
            fields = units.parse_infotext(str(text))
        except BackendError:
            continue
        values[widget_name(index, "enabled")] = True
        values.update({widget_name(index, k): v for k, v in fields.items() if k in PASTED})
    return values
