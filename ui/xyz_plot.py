"""The X/Y/Z plot's controls as A1111 has them: an axis with choices (samplers, checkpoints, ...) takes its values
from a dropdown, filled by its 📒 button, unless "Use text inputs instead of dropdowns" is on; the swap buttons
exchange two axes."""

from __future__ import annotations

import csv
from io import StringIO

import gradio as gr

from ui.context import UiContext

FILL = "\U0001f4d2"


def _csv(values: list[str]) -> str:
    out = StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue().strip()


def _split(text: str) -> list[str]:
    return [v.strip() for row in csv.reader(StringIO(text or ""), skipinitialspace=True) for v in row]


def wire_xyz_plot(ctx: UiContext, tab: str, widgets: dict) -> None:
    """`widgets`: the plot's controls by argument key (x_type, x_values, x_values_dropdown, ..., csv_mode)."""
    choices = ctx.service.plot_axis_choices(tab)
    labels = widgets["x_type"].choices
    labels = [c[0] if isinstance(c, tuple) else c for c in labels]
    fills = {}
    with gr.Row():
        for axis in "xyz":
            fills[axis] = gr.Button(f"{FILL} Fill {axis.upper()}", size="sm", visible=False,
                                    elem_id=f"{tab}_xyz_fill_{axis}")
    with gr.Row():
        swaps = {pair: gr.Button(f"Swap {pair[0].upper()}/{pair[1].upper()} axes", size="sm",
                                 elem_id=f"{tab}_xyz_swap_{pair}") for pair in ("xy", "yz", "xz")}

    def select(index, text, chosen, csv_mode):
        """Show the dropdown or the text box for the axis type, carrying the values across (A1111's rule)."""
        options = choices[index] if isinstance(index, int) and 0 <= index < len(choices) else None
        if options is None:  # the text stays as typed (an update carrying it could arrive after later typing)
            return gr.update(visible=False), gr.update(visible=True), gr.update(visible=False)
        if csv_mode:
            text = _csv([v for v in chosen or [] if v in options]) if chosen else text
            return gr.update(visible=True), gr.update(visible=True, value=text), gr.update(visible=False, value=[])
        kept = [v for v in _split(text) if v in options] if text else list(chosen or [])
        return (gr.update(visible=True), gr.update(visible=False, value=""),
                gr.update(visible=True, choices=options, value=[v for v in kept if v in options]))

    def fill(index, csv_mode):
        options = choices[index] if isinstance(index, int) and 0 <= index < len(choices) else None
        if options is None:
            return gr.update(), gr.update()
        return (gr.update(value=_csv(options)), gr.update()) if csv_mode else (gr.update(), gr.update(value=options))

    csv_mode = widgets["csv_mode"]
    for axis in "xyz":
        kind, text, chosen = widgets[f"{axis}_type"], widgets[f"{axis}_values"], widgets[f"{axis}_values_dropdown"]
        kind.change(select, inputs=[kind, text, chosen, csv_mode], outputs=[fills[axis], text, chosen])
        fills[axis].click(fill, inputs=[kind, csv_mode], outputs=[text, chosen])

    def reselect_all(csv_on, *values):
        updates = []
        for i in range(3):
            updates += select(values[3 * i], values[3 * i + 1], values[3 * i + 2], csv_on)
        return updates

    every = [widgets[f"{axis}_{part}"] for axis in "xyz" for part in ("type", "values", "values_dropdown")]
    outputs = [w for axis in "xyz" for w in (fills[axis], widgets[f"{axis}_values"],
                                             widgets[f"{axis}_values_dropdown"])]
    csv_mode.change(reselect_all, inputs=[csv_mode, *every], outputs=outputs)

    def swap(type_a, text_a, chosen_a, type_b, text_b, chosen_b):
        return labels[type_b], text_b, chosen_b, labels[type_a], text_a, chosen_a

    for pair, button in swaps.items():
        group = [widgets[f"{axis}_{part}"] for axis in pair for part in ("type", "values", "values_dropdown")]
        button.click(swap, inputs=group, outputs=group)
