"""The real app in headless Chromium: what a person does in each tab."""

import shutil
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.server import running_app

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def app_url(models_dir, tmp_path_factory):
    with running_app(models_dir, tmp_path_factory.mktemp("ui") / "outputs", "--ckpt", "sd1") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app_url)
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    page.wait_for_selector("#page_ready [data-ready]", state="attached", timeout=60_000)  # defaults are set
    yield page
    context.close()


def paste_parameters(page, tab: str, text: str) -> None:
    page.fill(f"#{tab}_prompt textarea", text)
    page.click(f"#{tab}_paste")
    page.wait_for_function(f"document.querySelector('#{tab}_prompt textarea').value.indexOf('Steps:') < 0")


def wait_for_info(page, tab: str, needle: str, timeout: int = 120_000) -> None:
    """Wait for the tab's info to show `needle`; a Gradio error toast fails at once with its text."""
    page.wait_for_function(
        f"document.querySelector('#{tab}_info textarea').value.includes({needle!r})"
        f" || document.querySelector('#{tab}_error').innerText.includes('Error:')"
        " || document.querySelector('[data-testid=toast-body]') !== null", timeout=timeout)
    if needle not in page.input_value(f"#{tab}_info textarea"):
        toasts = page.locator("[data-testid=toast-body]")
        shown = toasts.first.inner_text() if toasts.count() else page.inner_text(f"#{tab}_error")
        pytest.fail(f"the UI showed an error: {shown}")


def upload_to_editor(page, elem_id: str, path) -> None:
    """Put a picture into an ImageEditor as a person does (a click on its upload area opens the file chooser)
    and wait until it shows it (its placeholder goes away). Clicking waits until the editor is mounted and
    listening, which setting its file input directly did not: a just-opened editor could drop the file."""
    shown = f"!document.querySelector('#{elem_id}').innerText.includes('Upload an image')"
    for attempt in range(3):
        with page.expect_file_chooser(timeout=30_000) as chooser:
            page.click(f"#{elem_id} >> text=Upload an image", timeout=30_000)
        chooser.value.set_files(str(path))
        try:
            page.wait_for_function(shown, timeout=15_000)
            return
        except PlaywrightTimeout:
            if attempt == 2:
                raise


def set_number(page, elem_id: str, value: int) -> None:
    page.fill(f"#{elem_id} input[type=number]", str(value))
    page.press(f"#{elem_id} input[type=number]", "Enter")


def generate_and_wait(page, tab: str, parameters: str, seed: int, **numbers) -> None:
    """Paste `parameters`, set number fields (batch_size=2 ...), Generate, wait for the info to show `seed`."""
    paste_parameters(page, tab, parameters)
    for name, value in numbers.items():
        set_number(page, f"{tab}_{name}", value)
    page.click(f"#{tab}_generate")
    wait_for_info(page, tab, f"Seed: {seed}", 60_000)


def test_txt2img_generates_into_the_gallery(page):
    assert "You have no jobs in the queue" in page.inner_text("#queue_info")
    paste_parameters(page, "txt2img", "a lighthouse\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64")
    assert page.input_value("#txt2img_prompt textarea") == "a lighthouse"
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img", timeout=60_000)
    wait_for_info(page, "txt2img", "Seed: 5")
    assert "Steps: 3, Sampler: Euler" in page.input_value("#txt2img_info textarea")


def test_interrupt_a_long_run(page):
    paste_parameters(page, "txt2img", "a forest\nSteps: 150, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512")
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_interrupt", state="visible", timeout=30_000)
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Step')",
                           timeout=60_000)
    page.click("#txt2img_interrupt")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('interrupted')",
                           timeout=60_000)
    page.wait_for_selector("#txt2img_generate", state="visible", timeout=30_000)
    # what was made is shown: the image decoded from the step it reached (not saved by default)
    assert "Done (interrupted): 1 image(s)" in page.inner_text("#txt2img_progress")
    page.wait_for_selector("#txt2img_gallery img", timeout=30_000)


def test_invalid_request_shows_an_error_and_page_stays_usable(page):
    page.click("#tab_img2img-button")
    page.click("#img2img_generate")
    page.wait_for_function("document.querySelector('#img2img_error').innerText.includes('upload an image first')",
                           timeout=30_000)
    page.click("#tab_txt2img-button")
    assert page.is_visible("#txt2img_generate")


def test_png_info_sends_parameters_to_txt2img(page, tmp_path):
    from PIL import Image

    from backend.outputs import png_info

    path = tmp_path / "made-elsewhere.png"
    Image.new("RGB", (64, 64), "green").save(path, pnginfo=png_info({"parameters":
        "a green field\nNegative prompt: fog\nSteps: 7, Sampler: Euler a, Schedule type: Karras, CFG scale: 4.5, "
        "Seed: 321, Size: 128x192"}))
    page.click("#tab_pnginfo-button")
    page.set_input_files("#pnginfo_image input[type=file]", str(path))
    page.wait_for_function("document.querySelector('#pnginfo_parameters textarea').value.includes('Seed: 321')",
                           timeout=30_000)
    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a green field'",
                           timeout=30_000)
    assert page.input_value("#txt2img_neg_prompt textarea") == "fog"
    assert page.input_value("#txt2img_seed input") == "321"
    assert page.input_value("#txt2img_steps input[type=number]") == "7"
    assert page.input_value("#txt2img_width input[type=number]") == "128"


def test_paint_a_mask_and_inpaint(page, tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (90, 120, 200)).save(path)
    page.click("#tab_inpaint-button")
    paste_parameters(page, "inpaint", "a moon\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 2, Size: 64x64")
    page.set_input_files("#inpaint_editor input[type=file]", str(path))
    canvas = page.locator("#inpaint_editor canvas").first
    canvas.wait_for(timeout=30_000)
    canvas.scroll_into_view_if_needed()
    time.sleep(1)
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 30, cy)  # the brush is the active tool once an image is loaded
    page.mouse.down()
    page.mouse.move(cx + 30, cy + 10, steps=20)
    page.mouse.up()
    time.sleep(1)
    page.click("#inpaint_generate")
    page.wait_for_selector("#inpaint_gallery img", timeout=90_000)
    assert "Mask blur: 4" in page.input_value("#inpaint_info textarea")


def test_empty_models_folder_starts_and_says_where_to_put_checkpoints(browser, tmp_path):
    (tmp_path / "models").mkdir()
    with running_app(tmp_path / "models", tmp_path / "outputs") as base:
        page = browser.new_page()
        page.goto(base)
        page.wait_for_function("document.querySelector('#models_status')?.innerText.includes('Stable-diffusion')",
                               timeout=60_000)
        assert "No checkpoint found" in page.inner_text("#models_status")
        page.click("#txt2img_generate")
        page.wait_for_function("document.querySelector('#txt2img_error')?.innerText.includes('No checkpoint found')",
                               timeout=30_000)
        page.close()


def test_ctrl_enter_generates_and_gallery_serves_the_saved_png_with_parameters(page, app_url):
    import io

    import requests
    from PIL import Image

    paste_parameters(page, "txt2img", "a red kite\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 9, Size: 64x64")
    page.click("#txt2img_prompt textarea")
    page.keyboard.press("Control+Enter")
    wait_for_info(page, "txt2img", "Seed: 9", 60_000)
    src = page.get_attribute("#txt2img_gallery img", "src")
    data = requests.get(src if src.startswith("http") else app_url + src, timeout=30).content
    served = Image.open(io.BytesIO(data))
    assert served.size == (64, 64) and "Seed: 9" in served.info.get("parameters", "")


def test_generation_info_follows_the_selected_thumbnail_and_send_uses_it(page):
    generate_and_wait(page, "txt2img", "boats\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 20, Size: 64x64", 20,
                      batch_size=2)
    thumbnails = page.locator("#txt2img_gallery .thumbnail-item")
    thumbnails.nth(2).click()  # grid, seed 20, seed 21
    wait_for_info(page, "txt2img", "Seed: 21", 30_000)
    page.click("#txt2img_send_to_extras")
    page.wait_for_selector("#extras_image img", timeout=30_000)
    page.click("#extras_generate")
    wait_for_info(page, "extras", "Postprocess upscaler", 60_000)
    assert "Postprocess upscale by: 2" in page.input_value("#extras_info textarea")


def test_hires_fix_from_the_ui(page):
    paste_parameters(page, "txt2img", "a tower\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, "
                                      "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent")
    page.click("#txt2img_generate")
    wait_for_info(page, "txt2img", "Hires upscale: 2.0", 60_000)
    page.wait_for_function("document.querySelector('#txt2img_gallery img')?.naturalWidth === 128", timeout=30_000)


def test_hires_pass_choices_from_a_pasted_infotext_reach_the_image(page):
    paste_parameters(page, "txt2img", "a tower\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 6, Size: 64x64, "
                                      "Denoising strength: 0.5, Hires checkpoint: sd1-pickle, Hires sampler: DPM++ 2M, "
                                      'Hires prompt: "a tall tower", Hires upscale: 2, Hires upscaler: Latent')
    page.click("#txt2img_generate")
    wait_for_info(page, "txt2img", "Seed: 6", 60_000)
    info = page.input_value("#txt2img_info textarea")
    assert "Hires checkpoint: sd1-pickle" in info and "Hires sampler: DPM++ 2M" in info
    assert "Hires prompt: a tall tower" in info and "Hires schedule type: Karras" in info


def test_pasted_settings_reach_the_image(page):
    paste_parameters(page, "txt2img", "a fox\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 4, Size: 64x64, "
                                      "ENSD: 31337, RNG: NV, Clip skip: 2")
    page.click("#txt2img_generate")
    wait_for_info(page, "txt2img", "Seed: 4", 60_000)
    info = page.input_value("#txt2img_info textarea")
    assert "Clip skip: 2" in info and "ENSD: 31337" in info and "RNG: NV" in info


def test_after_a_reload_the_page_shows_the_servers_model_and_list(page, app_url, models_dir):
    import requests

    # Another user (or the API) switches the model; a model is added and the list refreshed.
    extra = models_dir / "Stable-diffusion" / "added-later.safetensors"
    extra.write_bytes((models_dir / "Stable-diffusion" / "sd1.safetensors").read_bytes())
    try:
        page.click("#refresh_checkpoints")
        page.wait_for_timeout(1500)
        page.reload()
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        page.click("#setting_sd_model_checkpoint input")
        page.wait_for_selector("text=added-later.safetensors", timeout=30_000)
        page.keyboard.press("Escape")
        value = page.input_value("#setting_sd_model_checkpoint input")
        assert value.startswith("sd1.safetensors")
        assert requests.get(app_url + "/", timeout=30).status_code == 200
    finally:
        extra.unlink()


def test_extra_networks_cards_insert_and_remove_lora_tags(page, models_dir):
    import json

    import torch
    from safetensors.torch import save_file

    folder = models_dir / "Lora"
    folder.mkdir(exist_ok=True)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({key + ".lora_down.weight": torch.ones(4, 32) * 0.01, key + ".lora_up.weight": torch.ones(32, 4) * 0.01},
              str(folder / "mystyle.safetensors"))
    (folder / "mystyle.json").write_text(json.dumps({"preferred weight": 0.6, "activation text": "mystyle"}))
    try:
        page.click("#txt2img_extra_networks button >> nth=0")
        page.click("#txt2img_extra_refresh")
        card = page.locator("#txt2img_lora_cards .extra-network-card", has_text="mystyle")
        card.wait_for(timeout=30_000)
        page.fill("#txt2img_prompt textarea", "a garden")
        card.click()
        assert page.input_value("#txt2img_prompt textarea") == "a garden <lora:mystyle:0.6> mystyle"
        page.fill("#txt2img_steps input[type=number]", "2")
        page.fill("#txt2img_width input[type=number]", "64")
        page.fill("#txt2img_height input[type=number]", "64")
        page.click("#txt2img_generate")
        wait_for_info(page, "txt2img", "Lora hashes", 120_000)
        assert page.input_value("#txt2img_info textarea").startswith("a garden <lora:mystyle:0.6> mystyle\n")
        card.click()
        assert page.input_value("#txt2img_prompt textarea") == "a garden"
    finally:
        for name in ("mystyle.safetensors", "mystyle.json"):
            (folder / name).unlink()


def test_token_counter_skip_visibility_and_hover_hints(page):
    assert not page.is_visible("#txt2img_skip") and not page.is_visible("#txt2img_interrupt")
    page.fill("#txt2img_prompt textarea", "a (cat:1.2), " + "tree " * 80)
    page.wait_for_function("document.querySelector('#txt2img_token_counter').innerText.includes('/150')",
                           timeout=30_000)
    assert page.inner_text("#txt2img_token_counter").strip() == "83/150"
    page.wait_for_function("document.getElementById('txt2img_random_seed').title !== ''", timeout=10_000)
    assert "random" in page.get_attribute("#txt2img_random_seed", "title")


def test_styles_save_apply_and_generate(page):
    page.fill("#txt2img_prompt textarea", "{prompt}, watercolor")
    page.fill("#txt2img_style_name textarea, #txt2img_style_name input", "Watercolor")
    page.click("#txt2img_style_save")
    page.wait_for_timeout(1000)
    page.fill("#txt2img_prompt textarea", "a boat")
    page.click("#txt2img_styles input")
    page.click("li:has-text('Watercolor')")
    page.keyboard.press("Escape")
    page.click("#txt2img_style_apply")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a boat, watercolor'",
                           timeout=30_000)


def _open_tab(page, tab_id: str) -> None:
    """Tabs beyond the window's width sit in an overflow menu; click the tab button itself."""
    page.wait_for_function(f"document.getElementById('{tab_id}-button') !== null", timeout=30_000)
    page.evaluate(f"document.getElementById('{tab_id}-button').click()")


def test_settings_tab_applies_and_persists_options(page, app_url):
    import requests

    _open_tab(page, "tab_settings")
    page.wait_for_selector("#setting_eta_noise_seed_delta input", timeout=30_000)
    page.fill("#setting_eta_noise_seed_delta input", "31337")
    page.click("#settings_submit")
    page.wait_for_function("document.querySelector('#settings_result').innerText.includes('applied')",
                           timeout=30_000)
    page.reload()
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    _open_tab(page, "tab_settings")
    page.wait_for_function("document.querySelector('#setting_eta_noise_seed_delta input').value === '31337'",
                           timeout=30_000)
    _open_tab(page, "tab_txt2img")
    paste_parameters(page, "txt2img", "a fox\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 4, Size: 64x64")
    page.click("#txt2img_generate")
    wait_for_info(page, "txt2img", "ENSD: 31337", 60_000)
    _open_tab(page, "tab_settings")
    page.fill("#setting_eta_noise_seed_delta input", "0")
    page.click("#settings_submit")
    page.wait_for_timeout(500)
    assert requests.get(app_url + "/", timeout=30).status_code == 200


def test_default_sampler_setting_reaches_the_tabs(page):
    _open_tab(page, "tab_settings")
    page.click("#setting_default_sampler input")
    page.click("li:has-text('Euler a')")
    page.keyboard.press("Escape")
    page.click("#settings_submit")
    page.wait_for_function("document.querySelector('#settings_result').innerText.includes('applied')",
                           timeout=30_000)
    try:
        page.reload()
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        page.wait_for_function("document.querySelector('#txt2img_sampler input').value === 'Euler a'",
                               timeout=30_000)
    finally:
        _open_tab(page, "tab_settings")
        page.click("#setting_default_sampler input")
        page.click("li:has-text('DPM++ 2M') >> nth=0")
        page.keyboard.press("Escape")
        page.click("#settings_submit")
        page.wait_for_timeout(500)


def test_keyboard_weight_editing_skip_and_interrupt(page):
    box = "#txt2img_prompt textarea"
    page.fill(box, "a cat, dog")
    page.evaluate(f"document.querySelector('{box}').setSelectionRange(2, 5)")
    page.focus(box)
    page.keyboard.press("Control+ArrowUp")
    assert page.input_value(box) == "a (cat:1.1), dog"
    page.keyboard.press("Control+ArrowUp")
    assert page.input_value(box) == "a (cat:1.2), dog"
    page.keyboard.press("Control+ArrowDown")
    page.keyboard.press("Control+ArrowDown")
    assert page.input_value(box) == "a cat, dog"
    # Esc interrupts a running job (the page shows it stopped)
    paste_parameters(page, "txt2img", "a forest\nSteps: 150, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512")
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_skip", state="visible", timeout=30_000)
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Step')", timeout=60_000)
    page.keyboard.press("Escape")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('interrupted')",
                           timeout=60_000)
    page.wait_for_selector("#txt2img_skip", state="hidden", timeout=30_000)


def test_alt_enter_skips_the_current_batch(page):
    paste_parameters(page, "txt2img", "a hill\nSteps: 60, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 256x256")
    set_number(page, "txt2img_batch_count", 2)
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('batch 1/2')",
                           timeout=60_000)
    page.focus("#txt2img_prompt textarea")
    page.keyboard.press("Alt+Enter")
    page.wait_for_function("document.querySelector('#txt2img_progress').innerText.includes('Done')", timeout=120_000)
    assert "Done: 1 image(s)" in page.inner_text("#txt2img_progress")


def test_save_and_zip_download_the_saved_pngs(page, app_url):
    import io
    import zipfile

    import requests

    generate_and_wait(page, "txt2img", "two boats\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 30, Size: 64x64", 30,
                      batch_size=2)
    page.click("#txt2img_save_zip")
    link = page.locator("#txt2img_download a").first
    link.wait_for(timeout=30_000)
    href = link.get_attribute("href")
    data = requests.get(href if href.startswith("http") else app_url + href, timeout=30).content
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert len(names) == 3 and names[0].startswith("000-grid")  # the grid, then the two images
    assert page.is_visible("#txt2img_open_folder")  # served to this machine only


def test_img2img_source_and_result_are_in_view_together_at_1366x768(browser, app_url):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    try:
        page.goto(app_url)
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        page.click("#tab_img2img-button")
        page.wait_for_selector("#img2img_image", timeout=30_000)
        for selector in ("#img2img_image", "#img2img_gallery"):
            box = page.locator(selector).bounding_box()
            assert box is not None and box["y"] < 768 - 100, (selector, box)  # at least 100 px of each in view
    finally:
        context.close()


def test_send_to_img2img_fills_the_parameters_and_size(page):
    generate_and_wait(page, "txt2img", "a mill\nNegative prompt: fog\nSteps: 3, Sampler: Euler, CFG scale: 6, "
                                       "Seed: 33, Size: 64x64", 33)
    page.click("#txt2img_send_to_img2img")
    page.wait_for_function("document.querySelector('#img2img_prompt textarea')?.value === 'a mill'", timeout=30_000)
    assert page.input_value("#img2img_neg_prompt textarea") == "fog"
    assert page.input_value("#img2img_seed input") == "33"
    assert page.input_value("#img2img_width input[type=number]") == "64"
    page.wait_for_selector("#img2img_image img", timeout=30_000)


def test_send_to_extras_is_lossless(page, app_url):
    """The picture sent on equals the saved PNG pixel for pixel (PNG all the way, never WebP)."""
    import io

    import numpy as np
    import requests
    from PIL import Image

    def fetch(selector):
        src = page.get_attribute(selector, "src")
        return Image.open(io.BytesIO(requests.get(src if src.startswith("http") else app_url + src, timeout=30).content))

    generate_and_wait(page, "txt2img", "a bridge\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 44, Size: 64x64", 44)
    saved = fetch("#txt2img_gallery img")
    page.click("#txt2img_send_to_extras")
    page.wait_for_selector("#extras_image img", timeout=30_000)
    page.click("#extras_upscaler_1 input")
    page.click("#extras_upscaler_1 + * li:has-text('None'), li:has-text('None') >> nth=0")
    page.keyboard.press("Escape")
    page.click("#extras_generate")
    page.wait_for_selector("#extras_result img", timeout=60_000)
    result = fetch("#extras_result img")
    assert np.array_equal(np.asarray(result.convert("RGB")), np.asarray(saved.convert("RGB")))


def _choose(page, dropdown_id: str, option: str) -> None:
    page.click(f"#{dropdown_id} input")
    page.click(f"li[role=option]:has-text(\"{option}\") >> nth=0")
    page.keyboard.press("Escape")


def _fetch(page, app_url, selector):
    import io

    import requests
    from PIL import Image

    src = page.get_attribute(selector, "src")
    return Image.open(io.BytesIO(requests.get(src if src.startswith("http") else app_url + src, timeout=30).content))


def test_poor_mans_outpainting_from_the_img2img_tab(page, app_url, tmp_path):
    """The picture grows by the chosen pixels; the border is generated and the inside kept pixel for pixel."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(2)
    picture = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    picture.save(tmp_path / "source.png")
    page.click("#tab_img2img-button")
    paste_parameters(page, "img2img", "a field\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 12, Size: 64x64")
    page.set_input_files("#img2img_image input[type=file]", str(tmp_path / "source.png"))
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    _choose(page, "img2img_script", "Poor man's outpainting")
    page.wait_for_selector("#img2img_pm_pixels", state="visible", timeout=30_000)
    set_number(page, "img2img_pm_pixels", 32)
    set_number(page, "img2img_pm_mask_blur", 1)
    page.click("#img2img_generate")
    wait_for_info(page, "img2img", "Seed: 12", 120_000)
    result = np.asarray(_fetch(page, app_url, "#img2img_gallery img").convert("RGB"), dtype=np.int16)
    assert result.shape == (128, 128, 3)
    assert np.array_equal(result[39:89, 39:89], np.asarray(picture, dtype=np.int16)[7:57, 7:57])
    assert result[:16].mean() > 10  # the new border is generated, not the black it started as


def test_extras_with_an_esrgan_model(page, app_url, models_dir, tmp_path):
    """The ESRGAN file in models/ESRGAN is listed and runs: 2x equals the backend's upscale of the same file."""
    import numpy as np
    from PIL import Image

    from backend.upscale.models import UpscalerLibrary
    from backend.upscale.resize import upscale_by

    picture = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    picture.save(tmp_path / "small.png")
    _open_tab(page, "tab_extras")
    page.set_input_files("#extras_image input[type=file]", str(tmp_path / "small.png"))
    page.wait_for_selector("#extras_image img", timeout=30_000)
    _choose(page, "extras_upscaler_1", "4x_tiny")
    page.click("#extras_generate")
    wait_for_info(page, "extras", "4x_tiny", 60_000)
    result = _fetch(page, app_url, "#extras_result img").convert("RGB")
    expected = upscale_by(picture, "4x_tiny", 2.0, UpscalerLibrary([models_dir / "ESRGAN"]))
    assert result.size == (96, 80)
    assert np.array_equal(np.asarray(result), np.asarray(expected))


def test_extras_batch_of_files_and_from_a_folder(page, tmp_path):
    from PIL import Image

    for name, size in (("one.png", (16, 8)), ("two.png", (8, 8))):
        Image.new("RGB", size, "green").save(tmp_path / name)
    _open_tab(page, "tab_extras")
    page.click("#extras_batch_tab-button")
    page.set_input_files("#extras_image_batch input[type=file]", [str(tmp_path / "one.png"), str(tmp_path / "two.png")])
    page.wait_for_function("document.querySelectorAll('#extras_image_batch .file-preview tr, "
                           "#extras_image_batch a').length >= 2", timeout=30_000)
    page.click("#extras_generate")
    page.wait_for_function("document.querySelector('#extras_info textarea').value.startsWith('2 image(s)')",
                           timeout=60_000)
    page.wait_for_function("document.querySelectorAll('#extras_gallery img').length >= 2", timeout=30_000)
    page.click("#extras_folder_tab-button")  # served to this machine only: the folder batch is offered
    page.fill("#extras_batch_input_dir textarea", str(tmp_path))
    page.fill("#extras_batch_output_dir textarea", str(tmp_path / "done"))
    page.click("#extras_generate")
    deadline = time.time() + 60
    while not (tmp_path / "done" / "two.png").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert Image.open(tmp_path / "done" / "one.png").size == (32, 16)
    assert Image.open(tmp_path / "done" / "two.png").size == (16, 16)


def _choose_exact(page, dropdown_id: str, option: str) -> None:
    page.click(f"#{dropdown_id} input")
    page.click(f"li[role=option] >> text=\"{option}\"")
    page.keyboard.press("Escape")


def test_xyz_plot_from_the_txt2img_tab(page, app_url):
    """Steps typed as text, samplers picked from the dropdown A1111 shows for them; the grid has the legend's
    room (a left band of 3/4 of a cell for the Y labels); swapping X and Y swaps types and values."""
    paste_parameters(page, "txt2img", "a boat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 21, Size: 64x64")
    _choose(page, "txt2img_script", "X/Y/Z plot")
    page.wait_for_selector("#txt2img_xyz_x_type", state="visible", timeout=30_000)
    _choose_exact(page, "txt2img_xyz_x_type", "Steps")
    page.fill("#txt2img_xyz_x_values textarea", "2,3")
    _choose_exact(page, "txt2img_xyz_y_type", "Sampler")
    page.wait_for_selector("#txt2img_xyz_y_values_dropdown", state="visible", timeout=30_000)
    assert not page.is_visible("#txt2img_xyz_y_values")  # a dropdown axis hides its text box, as A1111
    for sampler in ("Euler", "DDIM"):  # typed to filter the long list, then picked
        page.fill("#txt2img_xyz_y_values_dropdown input", sampler)
        page.click(f"li[role=option] >> text=\"{sampler}\"")
    page.keyboard.press("Escape")
    page.click("#txt2img_generate")
    wait_for_info(page, "txt2img", "Script: X/Y/Z plot", 120_000)
    info = page.input_value("#txt2img_info textarea")
    assert "X Type: Steps, X Values: \"2,3\", Y Type: Sampler, Y Values: \"Euler,DDIM\"" in info
    grid = _fetch(page, app_url, "#txt2img_gallery img")
    assert grid.width == 2 * 64 + 48 and grid.height > 2 * 64
    page.click("#txt2img_xyz_swap_xy")
    page.wait_for_function("document.querySelector('#txt2img_xyz_x_type input').value === 'Sampler'")
    assert page.input_value("#txt2img_xyz_y_type input") == "Steps"
    assert page.input_value("#txt2img_xyz_y_values textarea") == "2,3"


def test_inpaint_upload_repaints_only_the_uploaded_mask(page, app_url, tmp_path):
    """A1111's Inpaint upload: the picture and a mask file; outside the mask the picture comes back unchanged."""
    import numpy as np
    from PIL import Image

    Image.new("RGB", (64, 64), (90, 120, 200)).save(tmp_path / "photo.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (24, 24, 40, 40))
    mask.save(tmp_path / "mask.png")
    page.click("#tab_inpaint-button")
    paste_parameters(page, "inpaint", "a moon\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 4, Size: 64x64")
    upload_to_editor(page, "inpaint_editor", tmp_path / "photo.png")
    page.set_input_files("#inpaint_mask_upload input[type=file]", str(tmp_path / "mask.png"))
    page.wait_for_selector("#inpaint_mask_upload img", timeout=30_000)
    page.click("#inpaint_generate")
    wait_for_info(page, "inpaint", "Seed: 4", 90_000)
    result = np.asarray(_fetch(page, app_url, "#inpaint_gallery img").convert("RGB"), dtype=np.int16)
    assert (result[:8, :8] == (90, 120, 200)).all() and np.abs(result[30:34, 30:34] - (90, 120, 200)).max() > 3


def test_img2img_batch_from_folders(page, tmp_path):
    """A1111's img2img Batch tab, on a server used on its machine alone: results keep the pictures' names."""
    from PIL import Image

    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for name, colour in (("first", (200, 40, 40)), ("second", (40, 40, 200))):
        Image.new("RGB", (64, 64), colour).save(source / f"{name}.png")
    page.click("#tab_img2img-button")
    paste_parameters(page, "img2img", "a field\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 12, Size: 64x64")
    page.click("#img2img_batch")
    page.fill("#img2img_batch_input_dir textarea", str(source))
    page.fill("#img2img_batch_output_dir textarea", str(target))
    page.click("#img2img_batch_generate")
    wait_for_info(page, "img2img", "Seed: 12", 120_000)
    assert sorted(p.name for p in target.iterdir()) == ["first.png", "second.png"]
    assert "Seed: 12" in Image.open(target / "second.png").info["parameters"]


def test_prompts_from_a_file_in_txt2img(page, tmp_path):
    (tmp_path / "prompts.txt").write_text("a red boat\n--prompt \"a blue car\" --seed 31\n")
    paste_parameters(page, "txt2img", "\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 30, Size: 64x64")
    _choose(page, "txt2img_script", "Prompts from file or textbox")
    page.wait_for_selector("#txt2img_pff_file", state="visible", timeout=30_000)
    page.set_input_files("#txt2img_pff_file input[type=file]", str(tmp_path / "prompts.txt"))
    page.wait_for_function("document.querySelector('#txt2img_pff_prompt_txt textarea').value.includes('blue car')",
                           timeout=30_000)
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img", timeout=90_000)
    page.wait_for_function("document.querySelectorAll('#txt2img_gallery img').length >= 2", timeout=60_000)
    assert page.input_value("#txt2img_info textarea").startswith("a red boat")


def test_controlnet_canny_unit_from_the_ui_gives_the_backends_pixels(page, app_url, service, tmp_path):
    """A canny unit set up in the accordion: the picture equals the same request made to the backend
    directly (what the API runs), the detected map follows it in the gallery, and a pasted infotext brings
    the unit back."""
    import cv2
    import numpy as np
    from PIL import Image

    from backend.control.units import ControlUnit
    from backend.generation.requests import GenerationRequest

    picture = np.full((64, 64, 3), 60, np.uint8)
    cv2.circle(picture, (30, 28), 14, (250, 40, 40), -1)
    Image.fromarray(picture).save(tmp_path / "pose.png")
    paste_parameters(page, "txt2img", "a castle\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 31, Size: 64x64")
    page.click("#txt2img_controlnet")
    upload_to_editor(page, "txt2img_cn0_image", tmp_path / "pose.png")
    page.click("#txt2img_cn0_enable input")
    _choose_exact(page, "txt2img_cn0_module", "canny")
    page.wait_for_selector("#txt2img_cn0_threshold_a", state="visible", timeout=30_000)
    _choose(page, "txt2img_cn0_model", "control_sd15_tiny")
    set_number(page, "txt2img_cn0_processor_res", 64)
    page.click("#txt2img_generate")
    wait_for_info(page, "txt2img", "Seed: 31")
    info = page.input_value("#txt2img_info textarea")
    assert 'ControlNet 0: "Module: canny, Model: control_sd15_tiny [' in info and "Processor Res: 64" in info
    ours = _fetch(page, app_url, "#txt2img_gallery img").convert("RGB")
    unit = ControlUnit(model="control_sd15_tiny", module="canny", image=Image.open(tmp_path / "pose.png"),
                       processor_res=64, threshold_a=100.0, threshold_b=200.0)
    expected = service.generate(GenerationRequest(prompt="a castle", steps=3, sampler_name="Euler", cfg_scale=7,
                                                  seed=31, width=64, height=64, checkpoint="sd1.safetensors",
                                                  save_images=False, control_units=(unit,)))
    assert np.array_equal(np.asarray(ours), np.asarray(expected.images[0]))
    assert page.locator("#txt2img_gallery img").count() >= 2  # the detected map follows the picture
    page.click("#txt2img_cn0_enable input")  # off; pasting the infotext turns it back on with its values
    set_number(page, "txt2img_cn0_processor_res", 512)
    paste_parameters(page, "txt2img", info)
    assert page.is_checked("#txt2img_cn0_enable input")
    assert page.input_value("#txt2img_cn0_processor_res input[type=number]") == "64"
