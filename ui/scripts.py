"""The Script dropdown of txt2img and img2img, and each script's controls, built from the backend's description
of them (A1111's controls, in A1111's order); their values become A1111's positional script_args."""

from __future__ import annotations

import gradio as gr

from ui.context import UiContext
from ui.xyz_plot import wire_xyz_plot

NONE = "None"
# script title -> the prefix of its controls' element ids
PREFIXES = {"Prompt matrix": "pmx", "Prompts from file or textbox": "pff", "X/Y/Z plot": "xyz", "Loopback": "loop",
            "Poor man's outpainting": "pm", "Outpainting mk2": "mk2", "SD upscale": "sdu"}


def build_scripts(ctx: UiContext, tab: str) -> dict:
    """{"script": the dropdown, title: [(argument, widget or None for text), ...]}; only the chosen script's
    controls are visible."""
    titles = [title for title in PREFIXES if title in ctx.service.script_titles(tab)]
    built: dict = {"script": gr.Dropdown([NONE, *titles], value=NONE, label="Script", elem_id=f"{tab}_script")}
    groups = []
    for title in titles:
        with gr.Group(visible=False) as group:
            built[title] = [(a, _widget(a, f"{tab}_{PREFIXES[title]}_{a.key}"))
                            for a in ctx.service.script_arguments(title, tab)]
            if title == "X/Y/Z plot":
                wire_xyz_plot(ctx, tab, dict((a.key, w) for a, w in built[title]))
            if title == "Prompts from file or textbox":
                _prompt_file_upload(tab, dict((a.key, w) for a, w in built[title])["prompt_txt"])
        groups.append(group)

    def show_chosen(name: str):
        updates = [gr.update(visible=name == title) for title in titles]
        return updates[0] if len(updates) == 1 else updates  # one output takes its value unwrapped

    built["script"].change(show_chosen, inputs=built["script"], outputs=groups)
    return built


def _prompt_file_upload(tab: str, text: gr.Textbox) -> None:
    """A1111's "Upload prompt inputs": a text file's lines go into the list of prompt inputs."""
    upload = gr.File(label="Upload prompt inputs", type="binary", elem_id=f"{tab}_pff_file")

    def read(data: bytes | None):
        if data is None:
            return gr.update(), gr.update()
        lines = [line.strip() for line in data.decode("utf8", errors="ignore").split("\n")]
        return None, "\n".join(lines)

    upload.upload(read, inputs=upload, outputs=[upload, text], show_progress="hidden")


def _widget(a, elem_id: str):
    if a.kind == "info":
        gr.Markdown(a.value)
        return None
    if a.kind == "slider":
        return gr.Slider(a.minimum, a.maximum, value=a.value, step=a.step, label=a.label, elem_id=elem_id)
    if a.kind == "radio":
        return gr.Radio(list(a.choices), value=a.value, label=a.label, elem_id=elem_id)
    if a.kind == "dropdown":  # its value is the choice's index, as A1111's script_args
        return gr.Dropdown(list(a.choices), value=a.value, type="index", label=a.label, elem_id=elem_id)
    if a.kind == "dropdown_value":
        return gr.Dropdown(list(a.choices), value=a.value, label=a.label, elem_id=elem_id)
    if a.kind == "multiselect":
        # its choices follow another control (the X/Y/Z axis type); the script checks every value it is given,
        # so a value the browser still holds from an earlier choice is refused there by name, not here as a crash
        return gr.Dropdown([], value=[], multiselect=True, visible=False, label=a.label, elem_id=elem_id,
                           allow_custom_value=True)
    if a.kind == "text":
        return gr.Textbox(value=a.value, label=a.label, lines=1 if a.key.endswith("values") else 4, elem_id=elem_id)
    if a.kind == "checkbox":
        return gr.Checkbox(value=a.value, label=a.label, elem_id=elem_id)
    return gr.CheckboxGroup(list(a.choices), value=list(a.value), label=a.label, elem_id=elem_id)


def script_inputs(built: dict) -> set:
    return {built["script"]} | {w for title in PREFIXES for _, w in built.get(title, []) if w is not None}


def script_choice(values: dict, built: dict) -> tuple[str, list] | None:
    """(title, A1111's script_args) for the chosen script, or None."""
    title = values[built["script"]]
    if title not in PREFIXES or title not in built:
        return None
    args = []
    for a, widget in built[title]:
        if widget is None:
            args.append("")
        elif a.kind == "slider":
            args.append(int(values[widget]) if isinstance(a.step, int) else float(values[widget]))
        elif a.kind in ("checkboxes", "multiselect"):
            args.append(list(values[widget] or []))
        else:
            args.append(values[widget])
    return title, args
