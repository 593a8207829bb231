"""The A1111-compatible REST API, over real HTTP against `python app.py --api` on loopback."""

import base64
import io
import json
import threading
import time

import cv2
import numpy as np
import pytest
import requests
from PIL import Image

from tests.server import running_app


@pytest.fixture(scope="module")
def api(models_dir, tmp_path_factory):
    with running_app(models_dir, tmp_path_factory.mktemp("api") / "outputs", "--api", "--ckpt", "sd1",
                     ready_path="/sdapi/v1/progress") as base:
        yield base + "/sdapi/v1"


def b64_png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


def test_txt2img_response_shape_and_infotext(api):
    r = requests.post(f"{api}/txt2img", json={**SMALL, "some_extension_key": {"x": 1}}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 1
    info = json.loads(body["info"])
    assert info["all_seeds"] == [11] and info["sd_model_hash"] and len(info["infotexts"]) == 1
    image = decode(body["images"][0])
    assert image.size == (64, 64)
    assert image.info["parameters"] == info["infotexts"][0]
    assert body["parameters"]["prompt"] == "a cat"


def test_batches_return_a_grid_first_only_when_a1111_makes_one(api):
    """A1111's API makes a grid only when the images are saved (save_images) and return_grid is on."""
    body = requests.post(f"{api}/txt2img", json={**SMALL, "batch_size": 2}, timeout=120).json()
    assert len(body["images"]) == 2 and json.loads(body["info"])["index_of_first_image"] == 0
    body = requests.post(f"{api}/txt2img", json={**SMALL, "batch_size": 2, "save_images": True}, timeout=120).json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1
    assert decode(body["images"][0]).size == (128, 64)


def test_init_images_go_to_parameters_only_when_asked(api):
    picture = b64_png(Image.new("RGB", (64, 64), (10, 200, 30)))
    for include in (False, True):
        body = requests.post(f"{api}/img2img", json={**SMALL, "init_images": [picture], "denoising_strength": 0.3,
                                                     "include_init_images": include}, timeout=120).json()
        assert len(body["images"]) == 1
        assert body["parameters"]["init_images"] == ([picture] if include else None)


def test_override_settings_picks_the_checkpoint(api):
    models = requests.get(f"{api}/sd-models", timeout=30).json()
    sdxl = next(m for m in models if m["model_name"] == "sdxl")
    body = requests.post(f"{api}/txt2img", json={**SMALL, "override_settings": {
        "sd_model_checkpoint": sdxl["title"], "CLIP_stop_at_last_layers": 2}}, timeout=120).json()
    info = json.loads(body["info"])
    assert info["sd_model_hash"] == sdxl["hash"] and info["clip_skip"] == 2
    assert "Clip skip: 2" in info["infotexts"][0]


def test_img2img_with_data_url_and_mask(api):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    r = requests.post(f"{api}/img2img", json={
        **SMALL, "init_images": ["data:image/png;base64," + b64_png(image)], "mask": b64_png(mask),
        "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False, "denoising_strength": 0.9}, timeout=120)
    assert r.status_code == 200, r.text
    out = decode(r.json()["images"][0]).convert("RGB")
    assert out.getpixel((2, 2)) == (200, 30, 30)
    assert "Mask blur" not in json.loads(r.json()["info"])["infotexts"][0]  # A1111 writes it only when > 0


def test_upscaler_for_img2img_from_override_settings(api):
    """A1111's option reaches img2img: a small init picture enlarged by the named upscaler is another picture
    than LANCZOS's, and an unknown name is a 422 naming the option."""
    small = b64_png(Image.new("RGB", (32, 32), (200, 30, 30)))
    body = {**SMALL, "init_images": [small], "denoising_strength": 0.1}
    plain = requests.post(f"{api}/img2img", json=body, timeout=120)
    enlarged = requests.post(f"{api}/img2img", json={**body, "override_settings": {
        "upscaler_for_img2img": "4x_tiny"}}, timeout=120)
    assert plain.status_code == enlarged.status_code == 200, enlarged.text
    assert plain.json()["images"][0] != enlarged.json()["images"][0]
    unknown = requests.post(f"{api}/img2img", json={**body, "override_settings": {"upscaler_for_img2img": "Nope"}},
                            timeout=120)
    assert unknown.status_code == 422 and "upscaler_for_img2img" in unknown.text, unknown.text


def test_listings(api):
    samplers = {s["name"]: s for s in requests.get(f"{api}/samplers", timeout=30).json()}
    assert set(samplers) >= {"Euler a", "DPM++ 2M", "DPM++ 2S a", "DPM++ 3M SDE", "DPM++ 2M SDE Heun", "DDIM"}
    assert samplers["DPM++ 3M SDE"]["options"] == {"scheduler": "exponential", "discard_next_to_last_sigma": True,
                                                   "brownian_noise": True}
    assert samplers["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert {s["label"] for s in requests.get(f"{api}/schedulers", timeout=30).json()} >= {"Karras", "Uniform"}
    assert requests.get(f"{api}/sd-vae", timeout=30).json() == []
    assert requests.get(f"{api}/scripts", timeout=30).json() == {
        "txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot"],
        "img2img": ["loopback", "outpainting mk2", "poor man's outpainting", "prompt matrix",
                    "prompts from file or textbox", "sd upscale", "x/y/z plot"]}
    assert "ram" in requests.get(f"{api}/memory", timeout=30).json()
    assert requests.post(f"{api}/refresh-checkpoints", timeout=30).status_code == 200
    models = requests.get(f"{api}/sd-models", timeout=30).json()
    assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(models[0])


def test_options_round_trip(api):
    models = requests.get(f"{api}/sd-models", timeout=30).json()
    target = next(m for m in models if m["model_name"] == "sd1")
    assert requests.post(f"{api}/options", json={"sd_model_checkpoint": target["title"]}, timeout=120).status_code == 200
    options = requests.get(f"{api}/options", timeout=30).json()
    assert options["sd_model_checkpoint"] == target["title"]
    assert {"sd_vae", "CLIP_stop_at_last_layers", "samples_save"} <= set(options)


def test_png_info(api):
    body = requests.post(f"{api}/txt2img", json=SMALL, timeout=120).json()
    info = requests.post(f"{api}/png-info", json={"image": body["images"][0]}, timeout=30).json()
    assert info["info"].startswith("a cat\nSteps: 3, Sampler: Euler")
    assert info["parameters"]["Seed"] == "11"


@pytest.mark.parametrize("extension, pil_name", [("jpg", "JPEG"), ("webp", "WEBP")])
def test_samples_format_shapes_the_answer_and_png_info_reads_it(api, extension, pil_name):
    """As A1111's API: the answer's pictures are in samples_format, the infotext in their EXIF UserComment."""
    assert requests.post(f"{api}/options", json={"samples_format": extension}, timeout=30).status_code == 200
    try:
        body = requests.post(f"{api}/txt2img", json=SMALL, timeout=120).json()
    finally:
        requests.post(f"{api}/options", json={"samples_format": "png"}, timeout=30)
    picture = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert picture.format == pil_name
    info = requests.post(f"{api}/png-info", json={"image": body["images"][0]}, timeout=30).json()
    assert info["info"].startswith("a cat\nSteps: 3, Sampler: Euler") and info["parameters"]["Seed"] == "11"


@pytest.mark.parametrize("payload, field", [
    ({**SMALL, "width": 65}, "width"),
    ({**SMALL, "steps": 0}, "steps"),
    ({**SMALL, "steps": "many"}, "steps"),
    ({**SMALL, "cfg_scale": 99}, "cfg_scale"),
    ({**SMALL, "batch_size": 1000}, "batch_size"),
    ({**SMALL, "width": 100000}, "width"),
    ({**SMALL, "sampler_name": "Nope"}, "sampler_name"),
])
def test_bad_txt2img_input_is_a_4xx_naming_the_field(api, payload, field):
    r = requests.post(f"{api}/txt2img", json=payload, timeout=30)
    assert 400 <= r.status_code < 500
    body = r.json()
    assert set(body) >= {"error", "detail"} and field in body["detail"]


def test_invalid_json_bad_base64_and_unknown_model(api):
    r = requests.post(f"{api}/txt2img", data="{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422 and "invalid JSON" in r.json()["detail"]
    r = requests.post(f"{api}/img2img", json={**SMALL, "init_images": ["!!notbase64!!"]}, timeout=30)
    assert r.status_code == 422 and "init_images" in r.json()["detail"]
    r = requests.post(f"{api}/img2img", json={**SMALL, "init_images": [base64.b64encode(b"text").decode()]},
                      timeout=30)
    assert r.status_code == 422 and "not a readable image" in r.json()["detail"]
    for name in ("nope.safetensors", "../../etc/passwd", "/etc/passwd"):
        r = requests.post(f"{api}/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": name}},
                          timeout=30)
        assert r.status_code == 404, name
        r = requests.post(f"{api}/options", json={"sd_model_checkpoint": name}, timeout=30)
        assert r.status_code == 404
    r = requests.post(f"{api}/options", json={"sd_vae": "../x.safetensors"}, timeout=30)
    assert r.status_code == 404
    assert requests.get(f"{api}/samplers", timeout=30).status_code == 200  # still serving


def test_concurrent_requests_all_succeed(api):
    results = []

    def call(seed):
        r = requests.post(f"{api}/txt2img", json={**SMALL, "seed": seed}, timeout=300)
        results.append((r.status_code, json.loads(r.json()["info"])["all_seeds"]))

    threads = [threading.Thread(target=call, args=(100 + i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [(200, [100 + i]) for i in range(6)]


def test_progress_and_interrupt_mid_run(api):
    idle = requests.get(f"{api}/progress", timeout=30).json()
    assert idle["state"]["job_count"] == 0 and idle["progress"] == 0
    responses = []
    thread = threading.Thread(target=lambda: responses.append(
        requests.post(f"{api}/txt2img", json={**SMALL, "steps": 150, "n_iter": 5}, timeout=300)))
    thread.start()
    progress = None
    for _ in range(1200):  # A1111's default: a live preview every 10 steps (show_progress_every_n_steps)
        progress = requests.get(f"{api}/progress", timeout=30).json()
        if progress["state"]["sampling_step"] >= 12:
            break
        time.sleep(0.05)
    assert progress["state"]["job_count"] >= 1 and progress["current_image"]
    started = time.time()
    assert requests.post(f"{api}/interrupt", timeout=30).status_code == 200
    thread.join(120)
    assert time.time() - started < 30
    assert responses[0].status_code == 200 and json.loads(responses[0].json()["info"])["interrupted"]
    assert requests.post(f"{api}/txt2img", json=SMALL, timeout=120).status_code == 200


def test_openapi_docs(api):
    root = api.rsplit("/sdapi", 1)[0]
    assert requests.get(f"{root}/docs", timeout=30).status_code == 200
    spec = requests.get(f"{root}/openapi.json", timeout=30).json()
    assert "/txt2img" in spec["paths"]


def test_extras_endpoints_and_lists(api):
    image = Image.new("RGB", (32, 16), "red")
    r = requests.post(f"{api}/extra-single-image", json={"image": b64_png(image), "upscaler_1": "Lanczos",
                                                         "upscaling_resize": 2}, timeout=60)
    assert r.status_code == 200 and decode(r.json()["image"]).size == (64, 32)
    assert "Postprocess upscaler: Lanczos" in r.json()["html_info"]
    r = requests.post(f"{api}/extra-batch-images", json={"imageList": [{"data": b64_png(image), "name": "a"}] * 2,
                                                         "upscaler_1": "Nearest"}, timeout=60)
    assert r.status_code == 200 and len(r.json()["images"]) == 2
    r = requests.post(f"{api}/extra-single-image", json={"image": b64_png(image), "upscaler_1": "nope"}, timeout=60)
    assert r.status_code == 422 and r.json()["field"] == "upscaler_1"
    names = [u["name"] for u in requests.get(f"{api}/upscalers", timeout=30).json()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert [m["name"] for m in requests.get(f"{api}/latent-upscale-modes", timeout=30).json()][0] == "Latent"
    assert requests.get(f"{api}/face-restorers", timeout=30).json() == []
    r = requests.post(f"{api}/txt2img", json={**SMALL, "script_name": "outpainting mk2"}, timeout=60)
    assert r.status_code == 422 and r.json()["field"] == "script_name"


def test_img2img_scripts_by_name_and_args(api):
    scripts = {s["name"]: s for s in requests.get(f"{api}/script-info", timeout=30).json() if s["is_img2img"]}
    assert set(scripts) == {"outpainting mk2", "poor man's outpainting", "sd upscale", "x/y/z plot", "loopback",
                            "prompt matrix", "prompts from file or textbox"}
    assert scripts["poor man's outpainting"]["args"][0] == {"label": "Pixels to expand", "value": 128, "minimum": 8,
                                                           "maximum": 256, "step": 8, "choices": None}
    assert scripts["sd upscale"]["args"][2]["choices"][:3] == ["None", "Lanczos", "Nearest"]
    assert len(scripts["outpainting mk2"]["args"]) == 6 and scripts["sd upscale"]["is_img2img"]
    image = Image.new("RGB", (64, 64), (40, 120, 200))
    body = {**SMALL, "init_images": [b64_png(image)], "denoising_strength": 0.6}
    r = requests.post(f"{api}/img2img", json={**body, "script_name": "SD upscale",
                                              "script_args": ["", 16, "Lanczos", 2.0]}, timeout=120)
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (128, 128)
    assert "SD upscale upscaler: Lanczos" in json.loads(r.json()["info"])["infotexts"][0]
    r = requests.post(f"{api}/img2img", json={**body, "script_name": "poor man's outpainting",
                                              "script_args": [32, 4, 1, ["right"]]}, timeout=120)
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (128, 64)
    for bad, field in (({"script_name": "img2img alternative test"}, "script_name"),
                       ({"script_name": "sd upscale", "script_args": ["", 16, "nope"]}, "script_args"),
                       ({"script_name": "sd upscale", "script_args": "16"}, "script_args")):
        r = requests.post(f"{api}/img2img", json={**body, **bad}, timeout=60)
        assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_xyz_plot_through_the_api(api):
    info = [s for s in requests.get(f"{api}/script-info", timeout=30).json() if s["name"] == "x/y/z plot"]
    assert [s["is_img2img"] for s in info] == [False, True]
    assert len(info[0]["args"]) == 18 and info[0]["args"][0]["choices"][41] == "Size"
    assert info[1]["args"][0]["choices"][6] == "Image CFG Scale"
    args = [4, "2,3", [], 9, "", ["Euler", "DDIM"], 0, "", [], True, True, False, False, False, False, False, 0, False]
    r = requests.post(f"{api}/txt2img", json={**SMALL, "seed": 3, "script_name": "x/y/z plot", "script_args": args},
                      timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 5 and len(info["infotexts"]) == 5
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: \"2,3\", Y Type: Sampler, Y Values: \"Euler,DDIM\"" \
        in info["infotexts"][0]
    assert "Steps: 3, Sampler: DDIM" in info["infotexts"][4]
    alone = requests.post(f"{api}/txt2img", json={**SMALL, "seed": 3, "steps": 3, "sampler_name": "DDIM"}, timeout=120)
    assert np.array_equal(np.asarray(decode(alone.json()["images"][0])), np.asarray(decode(body["images"][4])))
    bad = [32, "true"] + args[2:]
    r = requests.post(f"{api}/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": bad}, timeout=60)
    assert r.status_code == 422 and "Face restore" in r.json()["detail"], r.text


def test_refiner_through_the_api_and_its_infotext(api):
    body = {**SMALL, "steps": 6, "refiner_checkpoint": "sd2-v", "refiner_switch_at": 0.5}
    r = requests.post(f"{api}/txt2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Refiner: sd2-v [" in text and "Refiner switch at: 0.5" in text
    pasted = requests.post(f"{api}/txt2img", json={"infotext": text}, timeout=120)
    assert np.array_equal(np.asarray(decode(pasted.json()["images"][0])), np.asarray(decode(r.json()["images"][0])))
    r = requests.post(f"{api}/txt2img", json={**SMALL, "refiner_checkpoint": "nope"}, timeout=60)
    assert r.status_code == 422 and r.json()["field"] == "refiner_checkpoint"


def test_init_images_list_is_the_batch(api):
    red, blue = Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))
    body = {**SMALL, "init_images": [b64_png(red), b64_png(blue)], "batch_size": 4, "denoising_strength": 0.3}
    r = requests.post(f"{api}/img2img", json=body, timeout=120)
    assert r.status_code == 200, r.text
    batch = [np.asarray(decode(i), dtype=np.int16) for i in r.json()["images"]]
    for got, picture, seed in zip(batch, (red, blue), (11, 12), strict=True):  # each from its own picture
        alone = requests.post(f"{api}/img2img", json={**body, "init_images": [b64_png(picture)], "seed": seed,
                                                      "batch_size": 1}, timeout=120)
        assert np.abs(np.asarray(decode(alone.json()["images"][0]), dtype=np.int16) - got).max() <= 1
    r = requests.post(f"{api}/img2img", json={**body, "batch_size": 1}, timeout=60)
    assert r.status_code == 422 and r.json()["field"] == "init_images"


def test_hires_fix_through_the_api(api):
    r = requests.post(f"{api}/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
                                              "denoising_strength": 0.5}, timeout=120)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert decode(r.json()["images"][0]).size == (128, 128) and (info["width"], info["height"]) == (64, 64)
    assert "Hires upscale: 2.0" in info["infotexts"][0]


def test_network_lists(api):
    assert requests.get(f"{api}/loras", timeout=30).json() == []  # no models/Lora in this data dir
    assert requests.get(f"{api}/hypernetworks", timeout=30).json() == []
    assert requests.post(f"{api}/refresh-loras", timeout=30).status_code == 200
    assert requests.get(f"{api}/embeddings", timeout=30).json() == {"loaded": {}, "skipped": {}}


def test_cmd_flags(api):
    flags = requests.get(f"{api}/cmd-flags", timeout=30).json()
    assert flags["api"] is True and flags["port"] > 0 and "api_auth" not in flags


def test_extensions_lists_the_built_in_features_in_a1111s_shape(api):
    extensions = requests.get(f"{api}/extensions", timeout=30).json()
    assert [e["name"] for e in extensions] == ["Lora"]
    assert set(extensions[0]) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled",
                                  "is_builtin"}
    assert extensions[0]["enabled"] and extensions[0]["is_builtin"]


def test_infotext_fills_what_the_request_does_not_set(api):
    """A1111 1.10's `infotext` field: its parameters fill the unset fields and name options; the request's
    own fields and override_settings win; keys that set nothing are reported."""
    text = ("a lighthouse\nNegative prompt: fog\nSteps: 4, Sampler: Euler a, Schedule type: Karras, CFG scale: 5, "
            "Seed: 77, Size: 64x64, Clip skip: 2, Made up key: 1")
    explicit = {"prompt": "a lighthouse", "negative_prompt": "fog", "steps": 4, "sampler_name": "Euler a",
                "scheduler": "Karras", "cfg_scale": 5, "seed": 77, "width": 64, "height": 64,
                "override_settings": {"CLIP_stop_at_last_layers": 2}}
    wanted = requests.post(f"{api}/txt2img", json=explicit, timeout=120).json()
    filled = requests.post(f"{api}/txt2img", json={"infotext": text}, timeout=120).json()
    assert filled["images"] == wanted["images"]
    assert json.loads(filled["info"])["warnings"] == ["infotext keys that set nothing here: Made up key"]
    own = requests.post(f"{api}/txt2img", json={"infotext": text, "seed": 78, "override_settings": {
        "CLIP_stop_at_last_layers": 1}}, timeout=120).json()
    info = json.loads(own["info"])
    assert info["seed"] == 78 and info["clip_skip"] == 1 and info["steps"] == 4
    bad = requests.post(f"{api}/txt2img", json={"infotext": "p\nSteps: 3, Seed: x1, Size: 64x64"},
                        timeout=60)
    assert bad.status_code == 422 and bad.json()["field"] == "infotext"


def test_ngms_and_noise_multiplier_reach_the_image_from_the_request_or_the_options(api):
    plain = requests.post(f"{api}/txt2img", json=SMALL, timeout=120).json()
    ngms = requests.post(f"{api}/txt2img", json={**SMALL, "s_min_uncond": 10.0}, timeout=120).json()
    assert ngms["images"] != plain["images"] and "NGMS: 10.0" in json.loads(ngms["info"])["infotexts"][0]
    via_option = requests.post(f"{api}/txt2img", json={**SMALL, "override_settings": {"s_min_uncond": 10.0}},
                               timeout=120).json()
    assert via_option["images"] == ngms["images"]
    picture = b64_png(Image.new("RGB", (64, 64), (10, 200, 30)))
    body = {**SMALL, "init_images": [picture], "denoising_strength": 0.5}
    multiplied = requests.post(f"{api}/img2img", json={**body, "initial_noise_multiplier": 0.5}, timeout=120).json()
    assert "Noise multiplier: 0.5" in json.loads(multiplied["info"])["infotexts"][0]
    assert multiplied["images"] != requests.post(f"{api}/img2img", json=body, timeout=120).json()["images"]


# Every field of A1111 1.10's StableDiffusionTxt2ImgProcessingAPI / Img2ImgProcessingAPI (data from its models)
A1111_TXT2IMG_FIELDS = [
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h",
    "seed_resize_from_w", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width", "height",
    "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid", "eta", "denoising_strength", "s_min_uncond",
    "s_churn", "s_tmax", "s_tmin", "s_noise", "override_settings", "override_settings_restore_afterwards",
    "refiner_checkpoint", "refiner_switch_at", "disable_extra_networks", "firstpass_image", "comments", "enable_hr",
    "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
    "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "force_task_id", "sampler_index", "script_name", "script_args", "send_images", "save_images", "alwayson_scripts",
    "infotext"]
A1111_IMG2IMG_FIELDS = [
    name for name in A1111_TXT2IMG_FIELDS if not name.startswith(("hr_", "firstphase")) and name not in (
        "enable_hr", "firstpass_image")] + [
    "init_images", "resize_mode", "image_cfg_scale", "mask", "mask_blur_x", "mask_blur_y", "mask_blur", "mask_round",
    "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert",
    "initial_noise_multiplier", "latent_mask", "include_init_images"]


@pytest.mark.parametrize("body, fields", [("txt2img", A1111_TXT2IMG_FIELDS), ("img2img", A1111_IMG2IMG_FIELDS)])
def test_every_a1111_field_is_handled_or_refused_by_name(body, fields):
    """No A1111 field falls through to "unknown, not used": each is a body field, read by the translation, or
    refused when set (REFUSED_FIELDS)."""
    from backend.api.models import Img2ImgBody, Txt2ImgBody
    from backend.api.translate import HARMLESS_FIELDS, REFUSED_FIELDS, SIGMA_FIELDS

    model = Txt2ImgBody if body == "txt2img" else Img2ImgBody
    handled = set(model.model_fields) | set(REFUSED_FIELDS) | set(HARMLESS_FIELDS) | {n for n, _ in SIGMA_FIELDS} | {
        "eta"}
    assert [name for name in fields if name not in handled] == []


# ---------------------------------------------------------------- ControlNet through the extension's API
# (alwayson_scripts.controlnet and /controlnet/...): unchanged clients (webuiapi's ControlNetUnit shape) work.

CN_SMALL = {"prompt": "a castle", "negative_prompt": "blur", "steps": 4, "width": 64, "height": 64, "seed": 77,
         "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(api):
    """The same app: the extension's routes sit beside /sdapi/v1."""
    return api.removesuffix("/sdapi/v1")


def _cn_picture() -> Image.Image:
    img = np.full((64, 64, 3), 60, np.uint8)
    cv2.circle(img, (30, 28), 14, (250, 40, 40), -1)
    cv2.rectangle(img, (8, 46), (56, 54), (20, 220, 90), -1)
    return Image.fromarray(img)


def _cn_unit(**kw) -> dict:
    """The fields webuiapi's ControlNetUnit sends."""
    unit = {"input_image": b64_png(_cn_picture()), "module": "canny", "model": "control_sd15_tiny", "weight": 1.0,
            "resize_mode": "Crop and Resize", "lowvram": False, "processor_res": 64, "threshold_a": 100,
            "threshold_b": 200, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": 0,
            "pixel_perfect": False, "enabled": True}
    unit.update(kw)
    return unit


def _cn_txt2img(server, *units, **kw):
    body = {**CN_SMALL, **kw, "alwayson_scripts": {"ControlNet": {"args": list(units)}}}
    return requests.post(f"{server}/sdapi/v1/txt2img", json=body, timeout=300)


def test_extension_routes_answer_in_its_shapes(server):
    assert requests.get(f"{server}/controlnet/version", timeout=30).json() == {"version": 3}
    models = requests.get(f"{server}/controlnet/model_list?update=true", timeout=30).json()["model_list"]
    assert models[0] == "None" and any(m.startswith("control_sd15_tiny [") for m in models)
    assert "sub/control_sd21_tiny" not in models and any(m.startswith("control_sd21_tiny [") for m in models)
    modules = requests.get(f"{server}/controlnet/module_list", timeout=30).json()
    assert modules["module_list"][0] == "none" and "canny" in modules["module_list"]
    sliders = modules["module_detail"]["canny"]["sliders"]
    assert [s["name"] for s in sliders] == ["Resolution", "Low Threshold", "High Threshold"]
    assert sliders[1]["value"] == 100 and sliders[2]["value"] == 200
    assert "depth_midas" in modules["unavailable_modules"] and "depth_midas" not in modules["module_list"]
    aliased = requests.get(f"{server}/controlnet/module_list?alias_names=true", timeout=30).json()
    assert "invert (from white bg & black line)" in aliased["module_list"]
    types = requests.get(f"{server}/controlnet/control_types", timeout=30).json()["control_types"]
    assert types["Canny"]["default_option"] == "canny" and "All" in types
    assert requests.get(f"{server}/controlnet/settings", timeout=30).json() == {"control_net_unit_count": 3}


def test_detect_gives_the_canny_map(server):
    body = {"controlnet_module": "canny", "controlnet_input_images": [b64_png(_cn_picture())],
            "controlnet_processor_res": 64, "controlnet_threshold_a": 100, "controlnet_threshold_b": 200}
    r = requests.post(f"{server}/controlnet/detect", json=body, timeout=60)
    assert r.status_code == 200, r.text
    detected = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
    assert np.array_equal(detected[:, :, 0], cv2.Canny(np.asarray(_cn_picture()), 100, 200))
    bad = requests.post(f"{server}/controlnet/detect", json={**body, "controlnet_module": "openpose"}, timeout=60)
    assert bad.status_code == 422 and "body_pose_model.pth" in bad.text


def test_txt2img_with_a_unit_adds_its_map_and_infotext(server):
    r = _cn_txt2img(server, _cn_unit())
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and len(info["infotexts"]) == 1  # the picture, then the detected map
    assert 'ControlNet 0: "Module: canny, Model: control_sd15_tiny, Weight: 1.0, Resize Mode: Crop and Resize, ' \
           'Processor Res: 64, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, ' \
           'Pixel Perfect: False, Control Mode: Balanced"' in info["infotexts"][0]
    plain = requests.post(f"{server}/sdapi/v1/txt2img", json=CN_SMALL, timeout=300).json()
    assert body["images"][0] != plain["images"][0]
    no_map = _cn_txt2img(server, _cn_unit(save_detected_map=False)).json()
    assert len(no_map["images"]) == 1 and no_map["images"][0] == body["images"][0]
    # string and integer forms, and the new field names, give the same picture
    named = _cn_unit(control_mode="Balanced", resize_mode=1, low_vram=False)
    named["image"] = named.pop("input_image")
    del named["lowvram"]
    assert _cn_txt2img(server, named).json()["images"][0] == body["images"][0]
    both = _cn_txt2img(server, _cn_unit(image=named["image"]))
    assert both.status_code == 422 and "input_image" in both.text


def test_disabled_unit_is_pixel_equal_to_none(server):
    plain = requests.post(f"{server}/sdapi/v1/txt2img", json=CN_SMALL, timeout=300).json()
    off = _cn_txt2img(server, _cn_unit(enabled=False)).json()
    assert off["images"] == plain["images"] and "ControlNet" not in json.loads(off["info"])["infotexts"][0]


def test_pasted_infotext_brings_the_unit_back(server):
    r = _cn_txt2img(server, _cn_unit(weight=0.7, guidance_end=0.8))
    text = json.loads(r.json()["info"])["infotexts"][0]
    info = requests.post(f"{server}/sdapi/v1/png-info", json={"image": r.json()["images"][0]}, timeout=60).json()
    assert info["parameters"]["ControlNet 0"].startswith("Module: canny, Model: control_sd15_tiny, Weight: 0.7")
    assert text == info["info"]


@pytest.mark.parametrize("unit, field", [
    (_cn_unit(model="nope"), "controlnet.args[0].model"),
    (_cn_unit(module="depth_midas"), "controlnet.args[0].module"),
    (_cn_unit(module="no-such"), "controlnet.args[0].module"),
    (_cn_unit(input_image=None), "controlnet.args[0].image"),
    (_cn_unit(guidance_start=0.8, guidance_end=0.2), "controlnet.args[0].guidance_start"),
    (_cn_unit(weight=3), "controlnet.args[0].weight"),
    (_cn_unit(control_mode="Loud"), "controlnet.args[0].control_mode"),
    (_cn_unit(model="diffusers_xl_tiny"), "controlnet.args[0].model"),
])
def test_bad_units_are_named_in_a_4xx(server, unit, field):
    r = _cn_txt2img(server, unit)
    assert r.status_code == 422, r.text
    assert r.json().get("field") == field or field in r.text


def test_more_units_than_the_option_allows_are_refused(server):
    r = _cn_txt2img(server, _cn_unit(), _cn_unit(), _cn_unit(), _cn_unit())
    assert r.status_code == 422 and "control_net_unit_count" in r.text
    other = requests.post(f"{server}/sdapi/v1/txt2img", json={**CN_SMALL, "alwayson_scripts": {"adetailer": {}}},
                          timeout=60)
    assert other.status_code == 422 and "adetailer" in other.text


# ---------------------------------------------------------------- third-party tools our users script with,
# unmodified, against the same server

def test_webuiapi_script(server, tmp_path):
    webuiapi = pytest.importorskip("webuiapi")
    host, port = server.removeprefix("http://").split(":")
    client = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=3)
    models = client.util_get_model_names()
    title = next(m for m in models if m.startswith("sd1.safetensors ["))
    client.util_set_model(title)
    assert client.util_get_current_model() == title
    result = client.txt2img(prompt="a cat", width=64, height=64, seed=5, cfg_scale=7)
    assert result.image.size == (64, 64) and "Steps: 3" in result.image.info["parameters"]
    assert result.info["all_seeds"] == [5]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    inpainted = client.img2img(images=[result.image], mask_image=mask, inpainting_fill=1, width=64, height=64,
                               denoising_strength=0.8, seed=6)
    assert inpainted.image.size == (64, 64) and "Mask blur" in inpainted.image.info["parameters"]
    progress = client.get_progress()
    assert "progress" in progress
    client.interrupt()
    info = client.png_info(result.image)
    assert info.info.startswith("a cat")


def test_infotext_is_read_by_popular_readers(server, tmp_path):
    r = requests.post(server + "/sdapi/v1/txt2img", json={"prompt": "a red fox, snow", "negative_prompt": "blurry",
                                                          "steps": 3, "width": 64, "height": 64, "seed": 9,
                                                          "sampler_name": "DPM++ 2M", "scheduler": "Karras",
                                                          "save_images": True}, timeout=120)
    data = base64.b64decode(r.json()["images"][0])
    path = tmp_path / "from-api.png"
    path.write_bytes(data)

    from sd_parsers import ParserManager

    parsed = ParserManager().parse(Image.open(io.BytesIO(data)))
    assert parsed is not None
    assert any("a red fox" in p.value for p in parsed.prompts)
    assert any("blurry" in p.value for p in parsed.negative_prompts)
    assert any(s.name == "DPM++ 2M" or "DPM++ 2M" in str(s) for s in parsed.samplers)

    from sd_prompt_reader.image_data_reader import ImageDataReader

    with open(path, "rb") as f:
        reader = ImageDataReader(f)
    assert reader.status.name == "READ_SUCCESS"
    assert reader.positive == "a red fox, snow" and reader.negative == "blurry"
    assert "Seed: 9" in reader.setting
