"""Widgets every generation tab shares, and the handler that runs a job while streaming progress."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import gradio as gr

from backend import infotext
from backend.errors import BackendError
from backend.generation.requests import SAME_CHECKPOINT, GenerationRequest
from backend.jobs import Job
from backend.samplers import SAMPLERS, SCHEDULES
from ui import controlnet
from ui.context import UiContext

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25


@dataclass
class Controls:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    batch_count: gr.Slider
    batch_size: gr.Slider
    subseed: gr.Number
    subseed_strength: gr.Slider
    seed_resize_from_w: gr.Slider
    seed_resize_from_h: gr.Slider
    tiling: gr.Checkbox
    override_settings: gr.Dropdown  # A1111's "Override settings": options a pasted infotext carries
    styles: gr.Dropdown
    network_hashes: gr.State  # a pasted infotext's `Lora hashes`, to find LoRAs by hash when names differ

    def all(self) -> set:
        return {w for w in vars(self).values()
                if isinstance(w, gr.components.Component) and not isinstance(w, (gr.Button, gr.HTML))}


@dataclass
class Outputs:
    gallery: gr.Gallery
    info: gr.Textbox
    preview: gr.Image
    progress: gr.Markdown
    error: gr.Markdown
    job_id: gr.State
    seeds: gr.State
    infotexts: gr.State  # one per gallery item (the grid shows the first image's)
    selected: gr.State  # index of the selected gallery item, or None

    def all(self) -> list:
        return [w for w in vars(self).values() if isinstance(w, gr.components.Component)]


def build_controls(tab: str) -> Controls:
    prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tab}_prompt",
                        placeholder="Prompt (press Ctrl+Enter to generate; paste infotext and press ↙ to fill)")
    token_counter = gr.HTML("<span>0/75</span>", elem_id=f"{tab}_token_counter", elem_classes=["token-counter"])
    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}_neg_prompt")
    with gr.Row():
        styles = gr.Dropdown([], value=[], multiselect=True, label="Styles", elem_id=f"{tab}_styles", scale=4)
        apply_styles = gr.Button("Apply styles", size="sm", elem_id=f"{tab}_style_apply", scale=0)
        style_name = gr.Textbox(placeholder="style name", show_label=False, elem_id=f"{tab}_style_name", scale=2)
        save_style = gr.Button("Save style", size="sm", elem_id=f"{tab}_style_save", scale=0)
    with gr.Row():
        sampler = gr.Dropdown([s.name for s in SAMPLERS], value="DPM++ 2M", label="Sampling method",
                              elem_id=f"{tab}_sampler")
        schedule = gr.Dropdown(list(SCHEDULES), value="Automatic", label="Schedule type", elem_id=f"{tab}_scheduler")
        steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")
    with gr.Row():
        width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{tab}_width")
        height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{tab}_height")
    with gr.Row():
        batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
        batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
        cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale")
    with gr.Row():
        seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{tab}_seed")
        # characters the bundled DejaVu/Liberation fonts have (emoji would show as empty boxes without emoji fonts)
        random_seed = gr.Button("⚄ Random", elem_id=f"{tab}_random_seed", size="sm")
        reuse_seed = gr.Button("♻ Reuse last seed", elem_id=f"{tab}_reuse_seed", size="sm")
    with gr.Accordion("Extra", open=False, elem_id=f"{tab}_seed_extras"):
        with gr.Row():
            subseed = gr.Number(value=-1, precision=0, label="Variation seed", elem_id=f"{tab}_subseed")
            subseed_strength = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                         elem_id=f"{tab}_subseed_strength")
        with gr.Row():
            resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                 elem_id=f"{tab}_seed_resize_from_w")
            resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                 elem_id=f"{tab}_seed_resize_from_h")
        tiling = gr.Checkbox(label="Tiling (seamless)", elem_id=f"{tab}_tiling")
    overrides = gr.Dropdown([], value=[], multiselect=True, label="Override settings", allow_custom_value=True,
                            elem_id=f"{tab}_override_settings")
    random_seed.click(lambda: -1, outputs=seed)
    controls = Controls(prompt, negative, sampler, schedule, steps, width, height, cfg, seed, batch_count, batch_size,
                        subseed, subseed_strength, resize_w, resize_h, tiling, overrides, styles, gr.State([]))
    controls.reuse_seed_button = reuse_seed  # wired by the tab, which owns the info box
    controls.token_counter = token_counter  # wired by the tab, which has the service
    controls.style_widgets = (apply_styles, style_name, save_style)
    return controls


def build_outputs(tab: str, local_only: bool = True) -> Outputs:
    error = gr.Markdown(elem_id=f"{tab}_error", elem_classes=["error-box"])
    progress = gr.Markdown(elem_id=f"{tab}_progress")
    gallery = gr.Gallery(label="Output", columns=4, height=400, elem_id=f"{tab}_gallery", format="png",
                         interactive=False, object_fit="contain")
    preview = gr.Image(label="Preview", interactive=False, height=160, elem_id=f"{tab}_preview", visible=True)
    with gr.Row():
        open_folder = gr.Button("Open folder", size="sm", visible=local_only, elem_id=f"{tab}_open_folder")
        save = gr.Button("Save", size="sm", elem_id=f"{tab}_save")
        zip_all = gr.Button("Zip", size="sm", elem_id=f"{tab}_save_zip")
    download = gr.File(label="Download", visible=False, interactive=False, elem_id=f"{tab}_download")
    info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{tab}_info")
    outputs = Outputs(gallery, info, preview, progress, error, gr.State(None), gr.State([]), gr.State([]),
                      gr.State(None))
    outputs.gallery_buttons = (open_folder, save, zip_all, download)

    def on_select(infotexts: list[str], event: gr.SelectData):
        index = event.index if isinstance(event.index, int) else None
        text = infotexts[index] if index is not None and index < len(infotexts) else gr.update()
        return index, text

    gallery.select(on_select, inputs=outputs.infotexts, outputs=[outputs.selected, info])
    return outputs


def request_fields(values: dict, c: Controls) -> dict:
    """Shared widget values -> GenerationRequest keyword arguments."""
    return dict(
        prompt=values[c.prompt] or "",
        negative_prompt=values[c.negative_prompt] or "",
        sampler_name=values[c.sampler],
        scheduler=values[c.schedule],
        steps=int(values[c.steps]),
        width=int(values[c.width]),
        height=int(values[c.height]),
        cfg_scale=float(values[c.cfg_scale]),
        seed=int(values[c.seed]) if values[c.seed] is not None else -1,
        n_iter=int(values[c.batch_count]),
        batch_size=int(values[c.batch_size]),
        subseed=int(values[c.subseed]) if values[c.subseed] is not None else -1,
        subseed_strength=float(values[c.subseed_strength] or 0),
        seed_resize_from_w=int(values[c.seed_resize_from_w] or 0),
        seed_resize_from_h=int(values[c.seed_resize_from_h] or 0),
        tiling=bool(values[c.tiling]),
        **override_fields(values[c.override_settings] or []),
        network_hashes=tuple(tuple(pair) for pair in values[c.network_hashes] or []),
        styles=tuple(values[c.styles] or ()),
    )


SAME_SAMPLER, SAME_SCHEDULER = "Use same sampler", "Use same scheduler"  # A1111's hires choices

# Infotext keys that are settings (A1111 pastes them as "Override settings") -> request field and type
OVERRIDE_KEYS = {"Clip skip": ("clip_skip", int), "ENSD": ("eta_noise_seed_delta", int), "Eta": ("eta", float),
                 "Eta DDIM": ("eta", float), "Sigma churn": ("s_churn", float), "Sigma tmin": ("s_tmin", float),
                 "Sigma tmax": ("s_tmax", float), "Sigma noise": ("s_noise", float), "RNG": ("rng_source", str),
                 "Emphasis": ("emphasis", str)}
# Infotext keys that are options feeding a group of request fields (A1111's uni_pc_* options) -> option name
OPTION_OVERRIDE_KEYS = {"UniPC variant": ("uni_pc_variant", str), "UniPC skip type": ("uni_pc_skip_type", str),
                        "UniPC order": ("uni_pc_order", int),
                        "UniPC lower order final": ("uni_pc_lower_order_final", lambda v: v.lower() == "true"),
                        "NGMS": ("s_min_uncond", float), "Hires refiner": ("hires_fix_refiner_pass", str),
                        "Conditional mask weight": ("inpainting_mask_weight", float),
                        "Extra noise": ("img2img_extra_noise", float),
                        "Skip Early CFG": ("skip_early_cond", float),
                        "SGM noise multiplier": ("sgm_noise_multiplier", lambda v: v.lower() == "true"),
                        "Schedule min sigma": ("sigma_min", float), "Schedule max sigma": ("sigma_max", float),
                        "Schedule rho": ("rho", float),
                        "Discard penultimate sigma": ("always_discard_next_to_last_sigma",
                                                      lambda v: v.lower() == "true"),
                        "Token merging ratio": ("token_merging_ratio", float),
                        "Token merging ratio hr": ("token_merging_ratio_hr", float),
                        "NGMS all steps": ("s_min_uncond_all", lambda v: v.lower() == "true"),
                        "Noise multiplier": ("initial_noise_multiplier", float),
                        "Pad conds": ("pad_cond_uncond", lambda v: v.lower() == "true"),
                        "Pad conds v0": ("pad_cond_uncond_v0", lambda v: v.lower() == "true")}


def override_fields(entries: list[str]) -> dict:
    """["ENSD: 31337", ...] -> request fields."""
    return _read_entries(entries, OVERRIDE_KEYS)


def option_overrides(entries: list[str]) -> dict:
    """["UniPC order: 2", ...] -> {"uni_pc_order": 2}: settings read through the options."""
    return _read_entries(entries, OPTION_OVERRIDE_KEYS)


def _read_entries(entries: list[str], keys: dict) -> dict:
    """"Key: value" entries whose key is in `keys` -> {name: cast value}; a value that does not cast is left out."""
    values = {}
    for entry in entries:
        key, _, value = str(entry).partition(": ")
        if key in keys:
            name, cast = keys[key]
            try:
                values[name] = cast(value)
            except ValueError:
                continue
    return values


def network_hashes(text: str) -> list[list[str]]:
    """`name: 0123456789ab, other: ...` -> [[name, hash], ...]."""
    pairs = []
    for item in text.split(","):
        name, _, digest = item.strip().rpartition(":")
        if name.strip() and digest.strip():
            pairs.append([name.strip(), digest.strip()])
    return pairs


def run_job(ctx: UiContext, request: GenerationRequest, outputs: Outputs, owner: str = ""):
    """Submit for `owner`, then stream progress (queue position, step, ETA, live preview) until the job ends."""
    try:
        job = ctx.service.submit(request, owner)
    except BackendError as err:
        yield {outputs.error: f"**Error:** {err}", outputs.progress: ""}
        return
    yield {outputs.error: "", outputs.progress: progress_text(ctx, job), outputs.job_id: job.id}
    while not job.finished:
        time.sleep(POLL_SECONDS)
        update = {outputs.progress: progress_text(ctx, job)}
        preview = ctx.service.preview(job)
        if preview is not None:
            update[outputs.preview] = preview
        yield update
    try:
        result = job.wait()
    except BackendError as err:
        yield {outputs.error: f"**Error:** {err}", outputs.progress: ""}
        return
    except Exception as err:  # noqa: BLE001 - show it in the page, keep the page usable
        log.exception("job %s failed", job.id)
        yield {outputs.error: f"**Error:** {type(err).__name__} (the server log has the details)",
               outputs.progress: ""}
        return
    note = " (interrupted)" if result.interrupted else ""
    for warning in result.warnings:
        gr.Warning(warning)
    items, texts = gallery_items(result)
    yield {
        outputs.error: "".join(f"**Warning:** {w}  \n" for w in result.warnings),
        outputs.gallery: items,
        outputs.infotexts: texts,
        outputs.selected: None,
        outputs.info: result.infotexts[0] if result.infotexts else "",
        outputs.progress: f"Done{note}: {len(result.images)} image(s).",
        outputs.preview: None,
        outputs.seeds: result.seeds,
        outputs.job_id: None,
    }


def gallery_items(result) -> tuple[list, list[str]]:
    """What the gallery shows, and each item's infotext. Saved images are shown from their files, so what the
    user opens, downloads or sends on is the PNG with its parameters; unsaved ones as pictures."""
    grid = result.grid_path or result.grid
    images = result.paths if len(result.paths) == len(result.images) else result.images
    items = ([grid] if result.grid is not None else []) + list(images) + list(result.control_maps)
    texts = ([result.infotexts[0]] if result.grid is not None else []) + list(result.infotexts) + [
        ""] * len(result.control_maps)  # ControlNet's detected maps follow the images, as the extension shows them
    return [str(i) if not hasattr(i, "size") else i for i in items], texts


def progress_text(ctx: UiContext, job: Job) -> str:
    position = ctx.service.queue_position(job)
    if position > 0:
        return f"In queue: position {position}"
    p = job.progress
    if not p.steps:
        return p.textinfo or "Starting..."
    eta = p.eta_seconds()
    eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
    return f"Step {p.step}/{p.steps} (batch {p.batch_no + 1}/{p.batch_count}) {p.fraction:.0%}{eta_text}"


def fields_from_infotext(text: str) -> dict[str, object]:
    """Infotext -> values keyed by Controls attribute name (for paste and PNG Info's send-to buttons)."""
    parsed = infotext.parse(text or "")
    values: dict[str, object] = {"prompt": parsed.get("Prompt", ""), "negative_prompt": parsed.get("Negative prompt", "")}
    mapping = {"Steps": ("steps", int), "Sampler": ("sampler", str), "Schedule type": ("schedule", str),
               "CFG scale": ("cfg_scale", float), "Seed": ("seed", int), "Size-1": ("width", int),
               "Size-2": ("height", int), "Denoising strength": ("denoising_strength", float),
               "Mask blur": ("mask_blur", int), "Variation seed": ("subseed", int),
               "Variation seed strength": ("subseed_strength", float),
               "Seed resize from-1": ("seed_resize_from_w", int), "Seed resize from-2": ("seed_resize_from_h", int),
               "Tiling": ("tiling", lambda v: str(v).lower() == "true"),
               "Hires upscale": ("hr_scale", float), "Hires resize-1": ("hr_resize_x", int),
               "Hires resize-2": ("hr_resize_y", int), "Hires steps": ("hr_second_pass_steps", int),
               "Hires upscaler": ("hr_upscaler", str), "Hires checkpoint": ("hr_checkpoint", str),
               "Hires sampler": ("hr_sampler", str), "Hires schedule type": ("hr_scheduler", str),
               "Hires prompt": ("hr_prompt", str), "Hires negative prompt": ("hr_negative_prompt", str),
               "Refiner": ("refiner_checkpoint", str), "Refiner switch at": ("refiner_switch_at", float)}
    if "Steps" in parsed:  # a full parameter line: what it does not mention is off, as when it was made
        values.update(subseed_strength=0.0, seed_resize_from_w=0, seed_resize_from_h=0, tiling=False,
                      enable_hr=infotext.hires_enabled(parsed), hr_second_pass_steps=0,
                      hr_resize_x=0, hr_resize_y=0, hr_checkpoint=SAME_CHECKPOINT, hr_sampler=SAME_SAMPLER,
                      hr_scheduler=SAME_SCHEDULER, hr_prompt="", hr_negative_prompt="",
                      refiner_enable="Refiner" in parsed)
    if "Steps" in parsed:
        values["override_settings"] = [f"{key}: {parsed[key]}" for key in (*OVERRIDE_KEYS, *OPTION_OVERRIDE_KEYS)
                                       if key in parsed]
        values["network_hashes"] = network_hashes(str(parsed.get("Lora hashes", "")))
    for key, (name, cast) in mapping.items():
        if key in parsed:
            try:
                values[name] = cast(parsed[key])
            except ValueError:
                pass
    values.update(controlnet.infotext_values(parsed, "Steps" in parsed, controlnet.MAX_UNITS))
    return values


# Infotext keys that describe the result rather than set a field (nothing to apply), besides the mapped ones
_INFORMATIONAL = {"Prompt", "Negative prompt", "Size", "Model hash", "Model", "VAE hash", "VAE", "Version",
                  "Lora hashes", "TI hashes", "Hypernet", "Hypernet hash", "Memory fallback", "Seed resize from",
                  "Hires resize", "Masked content", "Inpaint area", "Masked area padding", "Mask mode"}


def unapplied_keys(text: str) -> list[str]:
    """Parameters of an infotext that the UI cannot set (reported when pasting or sending from PNG Info)."""
    parsed = infotext.parse(text or "")
    used = set(fields_from_infotext(text)) | set(OVERRIDE_KEYS) | set(OPTION_OVERRIDE_KEYS) | _INFORMATIONAL
    mapped = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Denoising strength", "Mask blur",
              "Variation seed", "Variation seed strength", "Tiling", "Hires upscale", "Hires steps", "Hires upscaler",
              "Hires checkpoint", "Hires sampler", "Hires schedule type", "Hires prompt", "Hires negative prompt",
              "Refiner", "Refiner switch at"}
    return [k for k in parsed if k not in used and k not in mapped and not k.endswith(("-1", "-2"))
            and not k.startswith("ControlNet ")]
