"""The whole page: top bar (model, VAE), the txt2img / img2img / Inpaint / PNG Info tabs, and the send-to links."""

from __future__ import annotations

import html
import logging

import gradio as gr

from backend.errors import BackendError
from ui.context import UiContext
from ui.generation_controls import fields_from_infotext, unapplied_keys
from ui.extras import build_extras_tab
from ui.png_info import build_png_info_tab
from ui.settings import build_settings_tab
from ui.tabs import Tab, build_tab, fill_targets, fill_updates

log = logging.getLogger(__name__)

CSS = """.error-box { color: #c62828; font-weight: 600; }
.extra-network-cards { display: flex; flex-wrap: wrap; gap: 8px; }
.extra-network-card { width: 128px; cursor: pointer; border: 1px solid #8884; border-radius: 6px; padding: 4px; }
.extra-network-card img, .extra-network-card .no-preview { width: 118px; height: 118px; object-fit: cover; }
.extra-network-card .no-preview { background: #8882; }
.extra-network-card .name { display: block; font-size: 12px; word-break: break-all; }
.sd-hidden { display: none !important; }
.token-counter { text-align: right; font-size: 12px; opacity: 0.8; }"""

# A1111's keyboard habits: Ctrl+Enter generates from a prompt box, Alt+Enter skips, Escape interrupts (in the
# visible generation tab).
JS = r"""
() => {
  window.sdExtraNetworkClick = (card) => {
    const tab = card.dataset.tab, kind = card.dataset.kind, value = card.dataset.value;
    const set = (selector, text) => {
      const box = document.querySelector(selector);
      box.value = text;
      box.dispatchEvent(new Event("input", { bubbles: true }));
    };
    if (kind === "checkpoint") {
      set(`#${tab}_extra_checkpoint textarea, #${tab}_extra_checkpoint input`, value);
      return;
    }
    const prompt = document.querySelector(`#${tab}_prompt textarea`);
    const text = prompt.value;
    // A1111: clicking a card that is already in the prompt takes it out again
    const next = text.includes(value) ? text.replace(value, "").replace(/  +/g, " ").trim()
                                      : (text.trim() ? text.replace(/\s*$/, " ") : "") + value;
    set(`#${tab}_prompt textarea`, next);
  };
  const visibleTab = () => ["txt2img", "img2img", "inpaint"].find(
      (t) => document.getElementById(`${t}_generate`)?.offsetParent !== null
          || document.getElementById(`${t}_interrupt`)?.offsetParent !== null);
  const press = (id) => { const b = document.getElementById(id); if (b && b.offsetParent !== null) b.click(); };
  // A hover hint on every icon button (A1111 gives all its tool buttons one)
  const hints = {
    random_seed: "Set the seed to -1: a new random seed each time",
    reuse_seed: "Reuse the seed of the selected (or last) image",
    paste: "Read generation parameters from the prompt box into the UI",
    refresh_checkpoints: "Refresh the lists of checkpoints and VAEs",
    interrupt: "Stop, keeping what has been made (Esc)",
    skip: "Skip the current image and go on with the next (Alt+Enter)",
    generate: "Generate (Ctrl+Enter in a prompt box)",
  };
  setInterval(() => {
    for (const [suffix, hint] of Object.entries(hints)) {
      document.querySelectorAll(`[id$="${suffix}"]`).forEach((el) => { if (!el.title) el.title = hint; });
    }
  }, 1000);
  // Ctrl+Up / Ctrl+Down: change the weight of the selected text (or the word at the caret) by 0.1, writing
  // (text:1.1); inside an existing (text:w) the weight changes, and at 1 the brackets go (A1111's edit-attention)
  const DELIMITERS = ".,\\/!?%^*;:{}=`~() \n";
  const editWeight = (box, up) => {
    const text = box.value;
    let start = box.selectionStart, end = box.selectionEnd;
    const open = text.lastIndexOf("(", start - 1), close = text.indexOf(")", end);
    if (open >= 0 && close >= 0 && !text.slice(open + 1, start).includes(")")) {
      const match = text.slice(open + 1, close).match(/^([\s\S]*):(-?[\d.]+)$/);
      if (match) {
        const weight = Math.round((parseFloat(match[2]) + (up ? 0.1 : -0.1)) * 100) / 100;
        const body = match[1];
        const replaced = weight === 1 ? body : `(${body}:${weight})`;
        box.value = text.slice(0, open) + replaced + text.slice(close + 1);
        const at = open + (weight === 1 ? 0 : 1);
        box.setSelectionRange(at, at + body.length);
        return;
      }
    }
    if (start === end) {
      while (start > 0 && !DELIMITERS.includes(text[start - 1])) start--;
      while (end < text.length && !DELIMITERS.includes(text[end])) end++;
    }
    if (start === end) return;
    const body = text.slice(start, end);
    box.value = text.slice(0, start) + `(${body}:${up ? 1.1 : 0.9})` + text.slice(end);
    box.setSelectionRange(start + 1, start + 1 + body.length);
  };
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      const box = e.target;
      if (box && box.tagName === "TEXTAREA" && box.closest("[id$='_prompt'], [id$='_neg_prompt']")) {
        e.preventDefault();
        editWeight(box, e.key === "ArrowUp");
        box.dispatchEvent(new Event("input", { bubbles: true }));
        return;
      }
    }
    const tab = visibleTab();
    if (!tab) return;
    const inPrompt = e.target.closest && e.target.closest(`#${tab}_prompt, #${tab}_neg_prompt`);
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && inPrompt) { e.preventDefault(); press(`${tab}_generate`); }
    else if (e.key === "Enter" && e.altKey) { e.preventDefault(); press(`${tab}_skip`); }
    else if (e.key === "Escape") { press(`${tab}_interrupt`); }
  });
}
"""


def build_ui(ctx: UiContext) -> gr.Blocks:
    with gr.Blocks(title="Stable Diffusion web UI") as demo:
        top = _build_top_bar(ctx)
        tabs: dict[str, Tab] = {}
        with gr.Tabs() as tab_group:
            for name, label in (("txt2img", "txt2img"), ("img2img", "img2img"), ("inpaint", "Inpaint")):
                with gr.Tab(label, id=name, elem_id=f"tab_{name}"):
                    tabs[name] = build_tab(ctx, name, top)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras_image = build_extras_tab(ctx)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png_image, png_text, png_buttons = build_png_info_tab()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_widgets, settings_values = build_settings_tab(ctx)
        _wire_send_to(tabs, tab_group, png_image, png_text, png_buttons, extras_image)
        # Every page load shows the server's state now, not the state when the page was built; the marker says
        # when that is done (one after another, so the marker comes last).
        ready = gr.HTML("", elem_id="page_ready")
        dropdowns = [w for tab in tabs.values() for w in (tab.controls.sampler, tab.controls.schedule)]

        def own_queue(request: gr.Request) -> str:
            return queue_text(ctx, request)

        demo.load(lambda: _server_state(ctx), outputs=[top["checkpoint"], top["vae"], top["status"]]).then(
            settings_values, outputs=list(settings_widgets.values())).then(
            lambda: _default_sampling(ctx, len(tabs)), outputs=dropdowns).then(
            lambda: ctx.service.get_options()["CLIP_stop_at_last_layers"], outputs=top["clip_skip"]).then(
            own_queue, outputs=top["queue"]).then(
            lambda: "<span data-ready='1'></span>", outputs=ready)
    return demo


def _default_sampling(ctx: UiContext, tab_count: int) -> list:
    """Each generation tab's sampler and schedule type start as the Settings say."""
    options = ctx.service.get_options()
    return [options["default_sampler"], options["default_scheduler"]] * tab_count


def _server_state(ctx: UiContext) -> tuple:
    return (gr.update(choices=ctx.checkpoint_titles(), value=ctx.current_title()),
            gr.update(choices=ctx.vae_choices()), _models_message(ctx))


def _build_top_bar(ctx: UiContext) -> dict:
    with gr.Row():
        checkpoint = gr.Dropdown(ctx.checkpoint_titles(), value=ctx.current_title(), label="Stable Diffusion checkpoint",
                                 elem_id="setting_sd_model_checkpoint", scale=4)
        refresh = gr.Button("↻", elem_id="refresh_checkpoints", min_width=40, scale=0)
        vae = gr.Dropdown(ctx.vae_choices(), value="Automatic", label="SD VAE", elem_id="setting_sd_vae", scale=2)
        clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id="quick_clip_skip", scale=1)
    status = gr.Markdown(_models_message(ctx), elem_id="models_status")
    with gr.Row():
        queue_info = gr.Markdown("", elem_id="queue_info")
        queue_refresh = gr.Button("↻ Queue", size="sm", elem_id="queue_refresh", scale=0, min_width=90)
        queue_cancel = gr.Button("Cancel my waiting jobs", size="sm", elem_id="queue_cancel", scale=0, min_width=180)

    def on_queue(request: gr.Request):
        return queue_text(ctx, request)

    def on_cancel(request: gr.Request):
        cancelled = ctx.service.cancel_waiting(ctx.owner(request))
        return f"Cancelled {cancelled} waiting job{'s' * (cancelled != 1)}. " + queue_text(ctx, request)

    queue_refresh.click(on_queue, outputs=queue_info)
    queue_cancel.click(on_cancel, outputs=queue_info)

    def on_refresh(current):
        ctx.service.refresh_models()
        titles = ctx.checkpoint_titles()
        value = current if current in titles else (titles[0] if titles else None)
        return gr.update(choices=titles, value=value), gr.update(choices=ctx.vae_choices()), _models_message(ctx)

    def on_change_checkpoint(title, progress=gr.Progress()):
        if not title:
            return ""
        try:
            job = ctx.service.select_checkpoint(title)
            progress(0.1, desc=f"Loading {title}")
            job.wait()
        except BackendError as err:
            return f"**Error:** {err}"
        except Exception as err:  # noqa: BLE001 - show it, keep the page usable
            log.exception("loading %s failed", title)
            return f"**Error loading {title}:** {type(err).__name__} (the server log has the details)"
        return f"Loaded {title}"

    refresh.click(on_refresh, inputs=checkpoint, outputs=[checkpoint, vae, status])
    checkpoint.input(on_change_checkpoint, inputs=checkpoint, outputs=status)
    clip_skip.release(lambda value: ctx.service.set_options({"CLIP_stop_at_last_layers": int(value)}) and None,
                      inputs=clip_skip, outputs=None)
    return {"checkpoint": checkpoint, "vae": vae, "status": status, "clip_skip": clip_skip, "queue": queue_info}


def queue_text(ctx: UiContext, request) -> str:
    """Who is logged in, and their jobs: running, waiting, and how many jobs are ahead of the next one."""
    owner = ctx.owner(request)
    user = getattr(request, "username", None)
    running, waiting = ctx.service.own_jobs(owner)
    parts = [f"Logged in as **{html.escape(user)}**." if user else ""]
    if running is None and not waiting:
        parts.append("You have no jobs in the queue.")
    else:
        parts.append(f"Your jobs: {1 if running else 0} running, {len(waiting)} waiting"
                     + (f" (the next has {waiting[0][1]} job(s) ahead of it)." if waiting else "."))
    return " ".join(p for p in parts if p)


def _models_message(ctx: UiContext) -> str:
    if ctx.checkpoint_titles():
        return ""
    return "⚠ " + ctx.service.no_checkpoint_message()


def _wire_send_to(tabs: dict[str, Tab], tab_group, png_image, png_text, png_buttons, extras_image) -> None:
    for target_name, button in png_buttons.items():
        target = tabs[target_name]
        outputs = fill_targets(target) + [tab_group]
        image_target = _image_target(target)
        if image_target is not None:
            outputs.append(image_target)

        def send(text, image, target=target, image_target=image_target):
            unapplied = unapplied_keys(text)
            if unapplied:
                gr.Warning(f"Not applied (no such field here): {', '.join(unapplied)}")
            updates = fill_updates(target, fields_from_infotext(text)) + [gr.Tabs(selected=target.name)]
            if image_target is not None:
                updates.append(image)
            return updates

        button.click(send, inputs=[png_text, png_image], outputs=outputs)

    for source in tabs.values():
        source.send_to_extras.click(lambda gallery, index: (_selected_image(gallery, index), gr.Tabs(selected="extras")),
                                    inputs=[source.outputs.gallery, source.outputs.selected],
                                    outputs=[extras_image, tab_group])
        for target_name, button in (("img2img", source.send_to_img2img), ("inpaint", source.send_to_inpaint)):
            target = tabs[target_name]
            button.click(lambda gallery, index, texts, target=target: _send_to_tab(target, gallery, index, texts),
                         inputs=[source.outputs.gallery, source.outputs.selected, source.outputs.infotexts],
                         outputs=[_image_target(target), tab_group, *fill_targets(target)])


def _send_to_tab(target: Tab, gallery, index, infotexts: list[str]) -> list:
    """As A1111's send-to buttons: the selected picture, its generation parameters, and width/height from the
    picture's size."""
    image = _selected_image(gallery, index)
    position = index if index is not None and index < len(infotexts) else len(infotexts) - 1
    values = fields_from_infotext(infotexts[position]) if infotexts else {}
    values.pop("override_settings", None)
    if image is not None:
        values.update(width=image.width, height=image.height)
    return [image, gr.Tabs(selected=target.name), *fill_updates(target, values)]


def _image_target(tab: Tab):
    return tab.extra.get("init_image") or tab.extra.get("editor")


def _selected_image(gallery, index: int | None):
    """The selected picture of a gallery value (a list of (image, caption) items), loaded from its saved file
    (pixel-exact); without a selection the last one, which is a single image, never the grid."""
    if not gallery:
        return None
    item = gallery[index if index is not None and 0 <= index < len(gallery) else -1]
    image = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(image, dict):
        image = image.get("path") or image.get("image", {}).get("path")
    if isinstance(image, str):
        from PIL import Image

        image = Image.open(image)
    return image
