"""The img2img tab's Script dropdown and each script's controls, as A1111 shows them; their values become
A1111's positional script_args for the backend."""

from __future__ import annotations

import gradio as gr

from ui.context import UiContext

NONE = "None"
POOR_MANS, MK2, SD_UPSCALE = "Poor man's outpainting", "Outpainting mk2", "SD upscale"
DIRECTIONS = ["left", "right", "up", "down"]
FILLS = ["fill", "original", "latent noise", "latent nothing"]


def build_scripts(ctx: UiContext, tab: str) -> dict:
    """The dropdown and every script's controls (only the chosen script's are visible)."""
    w: dict = {"script": gr.Dropdown([NONE, POOR_MANS, MK2, SD_UPSCALE], value=NONE, label="Script",
                                     elem_id=f"{tab}_script")}
    with gr.Group(visible=False) as w["group_poor_mans"]:
        w["pm_pixels"] = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id=f"{tab}_pm_pixels")
        w["pm_mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id=f"{tab}_pm_mask_blur")
        w["pm_fill"] = gr.Radio(FILLS, value="fill", label="Masked content", elem_id=f"{tab}_pm_fill")
        w["pm_direction"] = gr.CheckboxGroup(DIRECTIONS, value=DIRECTIONS, label="Outpainting direction",
                                             elem_id=f"{tab}_pm_direction")
    with gr.Group(visible=False) as w["group_mk2"]:
        gr.Markdown("Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising strength: 0.8")
        w["mk2_pixels"] = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id=f"{tab}_mk2_pixels")
        w["mk2_mask_blur"] = gr.Slider(0, 64, value=8, step=1, label="Mask blur", elem_id=f"{tab}_mk2_mask_blur")
        w["mk2_direction"] = gr.CheckboxGroup(DIRECTIONS, value=DIRECTIONS, label="Outpainting direction",
                                              elem_id=f"{tab}_mk2_direction")
        w["mk2_noise_q"] = gr.Slider(0.0, 4.0, value=1.0, step=0.01, label="Fall-off exponent (lower=higher detail)",
                                     elem_id=f"{tab}_mk2_noise_q")
        w["mk2_color_variation"] = gr.Slider(0.0, 1.0, value=0.05, step=0.01, label="Color variation",
                                             elem_id=f"{tab}_mk2_color_variation")
    with gr.Group(visible=False) as w["group_sd_upscale"]:
        gr.Markdown("Will upscale the image by the selected scale factor; use width and height sliders to set "
                    "tile size")
        w["sdu_overlap"] = gr.Slider(0, 256, value=64, step=16, label="Tile overlap", elem_id=f"{tab}_sdu_overlap")
        w["sdu_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Scale Factor", elem_id=f"{tab}_sdu_scale")
        w["sdu_upscaler"] = gr.Radio(ctx.service.image_upscaler_names(), value=NONE, label="Upscaler",
                                     elem_id=f"{tab}_sdu_upscaler")
    groups = [w["group_poor_mans"], w["group_mk2"], w["group_sd_upscale"]]
    w["script"].change(lambda name: [gr.update(visible=name == title) for title in (POOR_MANS, MK2, SD_UPSCALE)],
                       inputs=w["script"], outputs=groups)
    return w


def script_choice(values: dict, w: dict) -> tuple[str, list] | None:
    """(title, A1111's script_args) for the chosen script, or None."""
    name = values[w["script"]]
    if name == POOR_MANS:
        return name, [int(values[w["pm_pixels"]]), int(values[w["pm_mask_blur"]]), FILLS.index(values[w["pm_fill"]]),
                      list(values[w["pm_direction"]] or [])]
    if name == MK2:
        return name, ["", int(values[w["mk2_pixels"]]), int(values[w["mk2_mask_blur"]]),
                      list(values[w["mk2_direction"]] or []), float(values[w["mk2_noise_q"]]),
                      float(values[w["mk2_color_variation"]])]
    if name == SD_UPSCALE:
        return name, ["", int(values[w["sdu_overlap"]]), values[w["sdu_upscaler"]], float(values[w["sdu_scale"]])]
    return None
