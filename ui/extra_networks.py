"""The extra-networks panel under the prompts (A1111's Lora / Textual Inversion / Checkpoints cards): search,
sort, refresh; clicking a LoRA card adds `<lora:name:preferred weight>` to the prompt (or removes it),
an embedding card adds its name, a checkpoint card selects that model."""

from __future__ import annotations

import base64
import html
import io

import gradio as gr
from PIL import Image

from ui.context import UiContext

SORTS = ["Name", "Name (descending)"]


def _preview(path) -> str:
    """A small data-URL preview from `<name>.png` / `<name>.preview.png` beside the file, or ''."""
    for candidate in (path.with_suffix(".preview.png"), path.with_suffix(".png")):
        if candidate.is_file():
            try:
                image = Image.open(candidate).convert("RGB")
                image.thumbnail((128, 128))
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=80)
                return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
            except OSError:
                return ""
    return ""


def _cards(items: list[tuple[str, str, str, str]], tab: str, kind: str) -> str:
    """items: (name, text to insert or checkpoint title, description, preview url)."""
    if not items:
        return "<p class='extra-networks-empty'>Nothing here: put files into the folder and press refresh.</p>"
    cards = []
    for name, value, description, preview in items:
        image = f"<img src='{preview}' alt=''>" if preview else "<div class='no-preview'></div>"
        cards.append(
            f"<div class='extra-network-card' data-kind='{kind}' data-tab='{tab}' "
            f"data-value='{html.escape(value, quote=True)}' title='{html.escape(description or name, quote=True)}' "
            f"onclick='sdExtraNetworkClick(this)'>{image}<span class='name'>{html.escape(name)}</span></div>")
    return "<div class='extra-network-cards'>" + "".join(cards) + "</div>"


def lora_items(ctx: UiContext, search: str, sort: str):
    items = []
    for network in ctx.service.loras():
        card = network.card()
        weight = network.preferred_weight()
        text = f"<lora:{network.name}:{weight:g}>"
        activation = str(card.get("activation text") or "").strip()
        items.append((network.name, f"{text} {activation}".strip(), str(card.get("description") or ""),
                      _preview(network.path)))
    return _filtered(items, search, sort)


def embedding_items(ctx: UiContext, search: str, sort: str):
    loaded, _ = ctx.service.embedding_lists()
    return _filtered([(name, name, f"{e.count} vectors", "") for name, e in loaded.items()], search, sort)


def checkpoint_items(ctx: UiContext, search: str, sort: str):
    return _filtered([(c.model_name, c.title, c.title, _preview(c.path)) for c in ctx.service.checkpoints()
                      if not c.is_diffusers_folder] +
                     [(c.model_name, c.title, c.title, "") for c in ctx.service.checkpoints()
                      if c.is_diffusers_folder], search, sort)


def _filtered(items, search: str, sort: str):
    wanted = (search or "").strip().lower()
    items = [i for i in items if wanted in i[0].lower()]
    return sorted(items, key=lambda i: i[0].lower(), reverse=sort == "Name (descending)")


PAGES = {"Lora": (lora_items, "lora"), "Textual Inversion": (embedding_items, "embedding"),
         "Checkpoints": (checkpoint_items, "checkpoint")}


def build_extra_networks(ctx: UiContext, tab: str, checkpoint_dropdown: gr.Dropdown) -> None:
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}_extra_networks"):
        with gr.Row():
            search = gr.Textbox(label="Search", elem_id=f"{tab}_extra_search", scale=3)
            sort = gr.Dropdown(SORTS, value="Name", label="Sort", elem_id=f"{tab}_extra_sort", scale=1)
            refresh = gr.Button("Refresh", elem_id=f"{tab}_extra_refresh", scale=0)
        pages = {}
        with gr.Tabs():
            for title, (items, kind) in PAGES.items():
                with gr.Tab(title, elem_id=f"{tab}_extra_tab_{kind}"):
                    pages[title] = gr.HTML(_cards(items(ctx, "", "Name"), tab, kind), elem_id=f"{tab}_{kind}_cards")
        # checkpoint cards write the chosen title here (hidden); selecting it goes through the top dropdown
        chosen = gr.Textbox(elem_id=f"{tab}_extra_checkpoint", elem_classes=["sd-hidden"], show_label=False)

    def render(search_text, sort_by):
        return [_cards(items(ctx, search_text, sort_by), tab, kind) for items, kind in PAGES.values()]

    def on_refresh(search_text, sort_by):
        ctx.service.refresh_loras()
        ctx.service.refresh_embeddings()
        ctx.service.refresh_models()
        return render(search_text, sort_by)

    outputs = list(pages.values())
    search.change(render, inputs=[search, sort], outputs=outputs)
    sort.change(render, inputs=[search, sort], outputs=outputs)
    refresh.click(on_refresh, inputs=[search, sort], outputs=outputs)
    def on_checkpoint(title):
        ctx.service.select_checkpoint(title)  # loads in the queue; Generate uses what the dropdown shows
        return gr.update(value=title)

    chosen.input(on_checkpoint, inputs=chosen, outputs=checkpoint_dropdown)
