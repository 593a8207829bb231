"""UI handlers tested directly as functions (the browser tests cover the wiring)."""

import numpy as np
import pytest
from PIL import Image

from backend.generation.requests import MaskedContent
from backend.samplers import UniPCSettings
from backend.options import request_fields
from ui.generation_controls import fields_from_infotext, unapplied_keys
from ui.png_info import read_parameters
from ui.tabs import editor_image_and_mask


def test_painted_strokes_become_the_mask():
    background = Image.new("RGB", (32, 32), "blue")
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (4, 4, 10, 10))
    image, mask = editor_image_and_mask({"background": background, "layers": [layer], "composite": None}, None)
    assert image.size == (32, 32)
    assert np.asarray(mask)[5, 5] == 255 and np.asarray(mask)[20, 20] == 0


def test_uploaded_mask_takes_precedence_and_empty_editor_gives_nothing():
    background = Image.new("RGB", (8, 8))
    uploaded = Image.new("L", (8, 8), 255)
    assert editor_image_and_mask({"background": background, "layers": []}, uploaded)[1] is uploaded
    assert editor_image_and_mask(None, None) == (None, None)


def test_infotext_fills_the_fields():
    values = fields_from_infotext("a cat\nNegative prompt: dog\nSteps: 12, Sampler: Euler a, Schedule type: Karras, "
                                  "CFG scale: 5.5, Seed: 42, Size: 640x384, Denoising strength: 0.4, Mask blur: 8")
    assert values == {"prompt": "a cat", "negative_prompt": "dog", "steps": 12, "sampler": "Euler a",
                      "schedule": "Karras", "cfg_scale": 5.5, "seed": 42, "width": 640, "height": 384,
                      "denoising_strength": 0.4, "mask_blur": 8, "subseed_strength": 0.0, "seed_resize_from_w": 0,
                      "seed_resize_from_h": 0, "tiling": False, "enable_hr": False, "hr_second_pass_steps": 0,
                      "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint": "Use same checkpoint",
                      "hr_sampler": "Use same sampler", "hr_scheduler": "Use same scheduler", "hr_prompt": "",
                      "hr_negative_prompt": "", "override_settings": [], "network_hashes": [],
                      "refiner_enable": False, **{f"cn{i}_enabled": False for i in range(10)}}


def test_infotext_fills_controlnet_units():
    values = fields_from_infotext('a cat\nSteps: 12, Seed: 42, ControlNet 1: "Module: canny, Model: c [1], '
                                  'Weight: 0.5, Resize Mode: Just Resize, Processor Res: 64, Threshold A: 100.0, '
                                  'Threshold B: 200.0, Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: True, '
                                  'Control Mode: Balanced"')
    assert values["cn0_enabled"] is False and values["cn1_enabled"] is True
    assert values["cn1_module"] == "canny" and values["cn1_model"] == "c [1]" and values["cn1_weight"] == 0.5
    assert values["cn1_resize_mode"] == "Just Resize" and values["cn1_guidance_start"] == 0.1
    assert values["cn1_pixel_perfect"] is True and values["cn1_processor_res"] == 64


def test_png_info_reads_parameters():
    from backend.outputs import png_info

    image = Image.new("RGB", (8, 8))
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=png_info({"parameters": "p\nSteps: 1, Sampler: Euler, Seed: 3"}))
    text, parsed = read_parameters(Image.open(buf))
    assert text.startswith("p\n") and parsed["Seed"] == "3"
    assert read_parameters(Image.new("RGB", (4, 4)))[0] == "This image has no generation parameters."


def test_masked_content_labels_match_the_backend_order():
    from ui.tabs import MASKED_CONTENT

    assert [MaskedContent(i).name.lower().replace("_", " ") for i in range(4)] == MASKED_CONTENT


def test_infotext_fills_variation_seed_resize_and_tiling():
    values = fields_from_infotext("p\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Variation seed: 9, "
                                  "Variation seed strength: 0.25, Seed resize from: 128x96, Tiling: True")
    assert (values["subseed"], values["subseed_strength"]) == (9, 0.25)
    assert (values["seed_resize_from_w"], values["seed_resize_from_h"], values["tiling"]) == (128, 96, True)


def test_infotext_fills_hires_fix():
    values = fields_from_infotext("p\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.55, "
                                  "Hires resize: 128x96, Hires steps: 5, Hires upscaler: Lanczos")
    assert values["enable_hr"] is True and values["denoising_strength"] == 0.55
    assert (values["hr_resize_x"], values["hr_resize_y"], values["hr_second_pass_steps"]) == (128, 96, 5)
    assert values["hr_upscaler"] == "Lanczos"


def test_settings_in_an_infotext_become_override_settings():
    from ui.generation_controls import override_fields

    values = fields_from_infotext("p\nSteps: 3, Sampler: Euler a, Seed: 1, Size: 64x64, Clip skip: 2, ENSD: 31337, "
                                  "Eta: 0.5, RNG: NV, Sigma noise: 0.98")
    assert values["override_settings"] == ["Clip skip: 2", "ENSD: 31337", "Eta: 0.5", "Sigma noise: 0.98", "RNG: NV"]
    assert override_fields(values["override_settings"]) == {"clip_skip": 2, "eta_noise_seed_delta": 31337, "eta": 0.5,
                                                            "s_noise": 0.98, "rng_source": "NV"}


def test_unipc_settings_in_an_infotext_reach_the_request():
    from ui.generation_controls import option_overrides

    values = fields_from_infotext("p\nSteps: 3, Sampler: UniPC, Seed: 1, Size: 64x64, UniPC variant: bh2, "
                                  "UniPC order: 2, UniPC lower order final: False")
    assert values["override_settings"] == ["UniPC variant: bh2", "UniPC order: 2", "UniPC lower order final: False"]
    options = option_overrides(values["override_settings"])
    assert options == {"uni_pc_variant": "bh2", "uni_pc_order": 2, "uni_pc_lower_order_final": False}
    settings = request_fields({"uni_pc_skip_type": "logSNR", **options})["unipc"]
    assert settings == UniPCSettings(variant="bh2", skip_type="logSNR", order=2, lower_order_final=False)


def test_lora_hashes_are_kept_for_finding_networks_by_hash():
    values = fields_from_infotext('p <lora:old_name:1>\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, '
                                  'Lora hashes: "old_name: 0123456789ab, b: ffffffffffff"')
    assert values["network_hashes"] == [["old_name", "0123456789ab"], ["b", "ffffffffffff"]]


def test_parameters_the_ui_cannot_apply_are_named():
    from ui.generation_controls import unapplied_keys

    text = ("p\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Model hash: abc, Face restoration: CodeFormer, "
            "ADetailer model: face_yolov8n.pt, ENSD: 31337, Hires upscale: 2")
    assert unapplied_keys(text) == ["Face restoration", "ADetailer model"]


def test_infotext_fills_the_hires_pass_choices():
    values = fields_from_infotext('p\nSteps: 3, Sampler: Euler, Schedule type: Automatic, Seed: 1, Size: 64x64, '
                                  'Denoising strength: 0.5, Hires checkpoint: sd2-v [0123456789], '
                                  'Hires sampler: DPM++ 2M, Hires prompt: "a, b", Hires schedule type: Karras, '
                                  'Hires upscale: 2.0')
    assert (values["hr_checkpoint"], values["hr_sampler"], values["hr_scheduler"]) == (
        "sd2-v [0123456789]", "DPM++ 2M", "Karras")
    assert values["hr_prompt"] == "a, b" and values["hr_negative_prompt"] == ""
    plain = fields_from_infotext("p\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Hires upscale: 2.0")
    assert (plain["hr_checkpoint"], plain["hr_sampler"]) == ("Use same checkpoint", "Use same sampler")


@pytest.mark.parametrize("params, enabled", [
    ("Denoising strength: 0.5, Hires upscale: 2.0", True),
    ("Denoising strength: 0.5, Hires upscaler: Latent", True),
    ("Denoising strength: 0.5, Hires resize: 128x128", True),
    ("Hires upscale: 2.0", False),  # no denoising strength: A1111 leaves hires fix off
    ("Denoising strength: 0.5, Hires CFG Scale: 4", False),  # Forge's key alone
    ("Denoising strength: 0.5, Hires steps: 4, Hires sampler: Euler", False),
])
def test_paste_turns_hires_fix_on_by_a1111s_rule(params, enabled):
    values = fields_from_infotext(f"p\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, {params}")
    assert values["enable_hr"] is enabled


def test_ngms_noise_multiplier_and_pad_conds_in_an_infotext_reach_the_request():
    from ui.generation_controls import option_overrides, unapplied_keys

    text = ("p\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5, Noise multiplier: 0.7, "
            "NGMS: 2.5, NGMS all steps: True, Pad conds: True")
    values = fields_from_infotext(text)
    fields = request_fields(option_overrides(values["override_settings"]))
    assert (fields["s_min_uncond"], fields["s_min_uncond_all"], fields["initial_noise_multiplier"],
            fields["pad_conds"]) == (2.5, True, 0.7, "pad")
    assert unapplied_keys(text) == []


def test_refiner_keys_paste_into_the_refiner_controls():
    text = "a fox\nSteps: 3, Sampler: Euler, Seed: 2, Size: 64x64, Hires refiner: first pass, " \
           "Refiner: sd2-v [0123456789], Refiner switch at: 0.6"
    values = fields_from_infotext(text)
    assert values["refiner_enable"] is True and values["refiner_checkpoint"] == "sd2-v [0123456789]"
    assert values["refiner_switch_at"] == 0.6 and "Hires refiner: first pass" in values["override_settings"]
    assert unapplied_keys(text) == []
    assert fields_from_infotext("a fox\nSteps: 3, Sampler: Euler, Seed: 2")["refiner_enable"] is False


def test_paint_modes_inpaint_sketch_and_sketch():
    from ui.tabs import painted_image_and_mask

    background = Image.new("RGB", (32, 32), (0, 0, 255))
    composite = background.copy()
    composite.paste((255, 0, 0), (8, 8, 16, 16))
    editor = {"background": background, "layers": [], "composite": composite}
    image, mask = painted_image_and_mask(editor, None, "Inpaint sketch", 0, 0)
    assert np.asarray(mask)[10, 10] == 255 and np.asarray(mask)[20, 20] == 0
    assert image.getpixel((10, 10)) == (255, 0, 0) and image.getpixel((20, 20)) == (0, 0, 255)
    _, dimmed = painted_image_and_mask(editor, None, "Inpaint sketch", 50, 0)
    assert np.asarray(dimmed)[10, 10] in (127, 128)  # A1111's mask transparency
    blurred, _ = painted_image_and_mask(editor, None, "Inpaint sketch", 0, 4)
    assert blurred.getpixel((7, 12)) not in ((255, 0, 0), (0, 0, 255))  # the sketch blends in at its edge
    sketch, none = painted_image_and_mask(editor, None, "Sketch", 0, 4)
    assert none is None and sketch.getpixel((10, 10)) == (255, 0, 0)


def test_queue_text_names_the_account_and_its_jobs(service):
    import time
    from types import SimpleNamespace

    from backend.generation.requests import GenerationRequest
    from ui.context import UiContext
    from ui.layout import queue_text

    ctx = UiContext(service)
    alice = SimpleNamespace(username="alice", session_hash="s1")
    assert queue_text(ctx, alice) == "Logged in as **alice**. You have no jobs in the queue."
    long = GenerationRequest(prompt="p", steps=40, width=256, height=256, seed=1, checkpoint="sd1.safetensors",
                             save_images=False)
    running = service.submit(long, "bob")
    while running.progress.step < 1:
        time.sleep(0.01)
    waiting = [service.submit(long, "alice") for _ in range(2)]
    assert queue_text(ctx, alice) == ("Logged in as **alice**. Your jobs: 0 running, 2 waiting (the next has 1 "
                                      "job(s) ahead of it).")
    assert service.cancel_waiting("alice") == 2 and service.cancel_waiting("bob") == 0
    service.interrupt(owner="bob")
    for job in (running, *waiting):
        try:
            job.wait(60)
        except Exception:  # noqa: BLE001 - the cancelled ones end as interrupted
            pass
    assert all(job.interrupted for job in waiting)
