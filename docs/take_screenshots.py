"""Screenshots of each tab for the README: python docs/take_screenshots.py (uses tiny test checkpoints)."""

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.fixtures import tiny_models  # noqa: E402
from tests.server import running_app  # noqa: E402


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    tiny_models.write_checkpoint(tiny_models.make_sd1(), tmp / "models" / "Stable-diffusion" / "tiny-sd1.safetensors")
    with running_app(tmp / "models", tmp / "outputs") as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(base)
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        page.fill("#txt2img_prompt textarea", "a lighthouse\nSteps: 4, Sampler: Euler, Seed: 5, Size: 256x256")
        page.click("#txt2img_paste")
        time.sleep(1)
        page.click("#txt2img_generate")
        page.wait_for_selector("#txt2img_gallery img", timeout=60_000)
        time.sleep(1)
        page.evaluate("document.getElementById('txt2img_extra_networks').querySelector('button').click()")
        time.sleep(1)
        for tab in ("txt2img", "img2img", "inpaint", "extras", "pnginfo", "settings"):
            page.evaluate(f"document.getElementById('tab_{tab}-button').click()")  # some sit in an overflow menu
            time.sleep(1)
            page.screenshot(path=str(ROOT / "docs" / f"{tab}.png"))
        browser.close()


if __name__ == "__main__":
    main()
