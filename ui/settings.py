"""Settings tab: A1111's options this project implements, kept in config.json (the API's /options shows and
changes the same values)."""

from __future__ import annotations

import gradio as gr

from backend.errors import BackendError
from backend.generation.preview import PREVIEW_TYPES
from backend.outputs import FORMATS
from backend.samplers import SAMPLERS, SCHEDULES
from backend.samplers import UNIPC_SKIP_TYPES, UNIPC_VARIANTS
from ui.context import UiContext

# option name -> (label, widget factory)
SETTINGS = {
    "default_sampler": ("Default sampling method", lambda **kw: gr.Dropdown([x.name for x in SAMPLERS], **kw)),
    "default_scheduler": ("Default schedule type", lambda **kw: gr.Dropdown(list(SCHEDULES), **kw)),
    "CLIP_stop_at_last_layers": ("Clip skip", lambda **kw: gr.Slider(1, 12, step=1, **kw)),
    "emphasis": ("Emphasis mode", lambda **kw: gr.Radio(["Original", "No norm", "None"], **kw)),
    "randn_source": ("Random number generator source", lambda **kw: gr.Radio(["CPU", "NV", "GPU"], **kw)),
    "eta_noise_seed_delta": ("Eta noise seed delta (ENSD)", lambda **kw: gr.Number(precision=0, **kw)),
    "eta_ancestral": ("Eta for ancestral and SDE samplers", lambda **kw: gr.Slider(0.0, 1.0, step=0.01, **kw)),
    "eta_ddim": ("Eta for DDIM", lambda **kw: gr.Slider(0.0, 1.0, step=0.01, **kw)),
    "s_churn": ("Sigma churn", lambda **kw: gr.Slider(0.0, 100.0, step=0.01, **kw)),
    "s_tmin": ("Sigma tmin", lambda **kw: gr.Slider(0.0, 10.0, step=0.01, **kw)),
    "s_tmax": ("Sigma tmax (0 = infinity)", lambda **kw: gr.Slider(0.0, 999.0, step=0.01, **kw)),
    "s_noise": ("Sigma noise", lambda **kw: gr.Slider(0.0, 1.1, step=0.001, **kw)),
    "uni_pc_variant": ("UniPC variant", lambda **kw: gr.Radio(list(UNIPC_VARIANTS), **kw)),
    "uni_pc_skip_type": ("UniPC skip type", lambda **kw: gr.Radio(list(UNIPC_SKIP_TYPES), **kw)),
    "uni_pc_order": ("UniPC order (clamped to the steps)", lambda **kw: gr.Slider(1, 50, step=1, **kw)),
    "uni_pc_lower_order_final": ("UniPC lower order final", lambda **kw: gr.Checkbox(**kw)),
    "return_grid": ("Show the grid in results", lambda **kw: gr.Checkbox(**kw)),
    "samples_save": ("Always save all generated images", lambda **kw: gr.Checkbox(**kw)),
    "samples_format": ("File format for images", lambda **kw: gr.Radio(list(FORMATS), **kw)),
    "grid_format": ("File format for grids", lambda **kw: gr.Radio(list(FORMATS), **kw)),
    "jpeg_quality": ("Quality for saved jpeg, webp and avif images", lambda **kw: gr.Slider(1, 100, step=1, **kw)),
    "webp_lossless": ("Use lossless compression for webp images", lambda **kw: gr.Checkbox(**kw)),
    "live_previews_enable": ("Show live previews of the created image", lambda **kw: gr.Checkbox(**kw)),
    "show_progress_every_n_steps": ("Live preview display period (steps)",
                                    lambda **kw: gr.Slider(-1, 32, step=1, **kw)),
    "show_progress_type": ("Live preview method", lambda **kw: gr.Radio(list(PREVIEW_TYPES), **kw)),
    "auto_vae_precision": ("Automatically revert VAE to 32-bit floats (when it produces NaN in half precision)",
                           lambda **kw: gr.Checkbox(**kw)),
    "save_incomplete_images": ("Save incomplete images (interrupted)", lambda **kw: gr.Checkbox(**kw)),
    "interrupt_after_current": ("Interrupt finishes the current batch first", lambda **kw: gr.Checkbox(**kw)),
}


def build_settings_tab(ctx: UiContext):
    """The Settings tab; returns (its widgets by option name, a function giving their current values)."""
    widgets = {}
    current = ctx.service.get_options()
    with gr.Column():
        for name, (label, make) in SETTINGS.items():  # built with today's values; each page load refreshes them
            widgets[name] = make(label=label, value=current.get(name), elem_id=f"setting_{name}")
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
        result = gr.Markdown(elem_id="settings_result")

    def on_apply(*values):
        updates = {name: _typed(name, value) for name, value in zip(widgets, values, strict=True)}
        try:
            report = ctx.service.set_options(updates)
        except BackendError as err:
            return f"**Error:** {err}"
        return "Settings applied." + (f" Not implemented: {', '.join(report['not_implemented'])}"
                                      if report.get("not_implemented") else "")

    apply.click(on_apply, inputs=list(widgets.values()), outputs=result)
    return widgets, lambda: [gr.update(value=current) for current in current_values(ctx)]


def current_values(ctx: UiContext) -> list:
    values = ctx.service.get_options()
    return [values.get(name) for name in SETTINGS]


def _typed(name: str, value):
    if name in ("CLIP_stop_at_last_layers", "eta_noise_seed_delta", "uni_pc_order", "jpeg_quality",
                "show_progress_every_n_steps"):
        return int(value or 0)
    if name in ("return_grid", "samples_save", "save_incomplete_images", "interrupt_after_current",
                "uni_pc_lower_order_final", "webp_lossless", "live_previews_enable", "auto_vae_precision"):
        return bool(value)
    if name in ("emphasis", "randn_source", "samples_format", "default_sampler", "default_scheduler",
                "uni_pc_variant", "uni_pc_skip_type", "grid_format", "show_progress_type"):
        return value
    return float(value or 0)
