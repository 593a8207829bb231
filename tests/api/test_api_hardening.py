"""Hostile and heavy API use against the real server on loopback: malformed bodies, huge prompts, many waiting
requests, options, model overrides, interrupts, failed saves."""

import json
import threading
import time

import pytest
import requests

from tests.server import running_app

SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    (root / "a-file").write_text("the outputs folder cannot be created under a file")
    models = root / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    for name in ("sd1.safetensors", "sd2-v.safetensors"):
        (models / "Stable-diffusion" / name).symlink_to(models_dir / "Stable-diffusion" / name)
    (models / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\x10" + bytes(7) + b"{not json}......")
    with running_app(models, root / "a-file" / "outputs", "--api", "--ckpt", "sd1",
                     "--max-prompt-chunks", "3", ready_path="/sdapi/v1/progress", log_dir=root) as base:
        yield {"api": base + "/sdapi/v1", "models_dir": models, "root": root}


def _post_raw(api: str, path: str, raw: bytes):
    return requests.post(api + path, data=raw, headers={"Content-Type": "application/json"}, timeout=60)


def test_malformed_bodies_get_4xx_not_500(server):
    api = server["api"]
    nested = b'{"prompt": "x", "styles": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for raw, expected in ((nested, "nested"), (b'{"prompt": "\\ud800"}', "surrogate"),
                          (b'{"prompt": "x", "cfg_scale": NaN}', "NaN"), (b'{"prompt": ', "invalid JSON")):
        r = _post_raw(api, "/txt2img", raw)
        assert r.status_code == 422, (expected, r.status_code, r.text[:200])
        assert expected in r.json()["detail"]
    assert requests.get(api + "/progress", timeout=10).status_code == 200


def test_prompt_over_the_limit_is_a_4xx_naming_it(server):
    api = server["api"]
    r = requests.post(api + "/txt2img", json={**SMALL, "prompt": "word " * 1_000_000}, timeout=60)
    assert r.status_code == 422 and r.json()["field"] == "prompt" and "--max-prompt-chunks" in r.json()["detail"]
    r = requests.post(api + "/txt2img", json={**SMALL, "prompt": "cat, " * 200}, timeout=60)  # 400 tokens
    assert r.status_code == 422 and r.json()["detail"].startswith("prompt: is 6 chunks")


def test_errors_name_no_server_paths(server):
    api = server["api"]
    r = requests.post(api + "/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "nope"}},
                      timeout=60)
    assert r.status_code == 404 and str(server["models_dir"]) not in r.text and "/" not in r.json()["detail"]
    r = requests.post(api + "/options", json={"sd_vae": "missing.pt"}, timeout=60)
    assert r.status_code == 404 and str(server["models_dir"]) not in r.text


def test_images_come_back_when_saving_fails(server):
    r = requests.post(server["api"] + "/txt2img", json={**SMALL, "save_images": True}, timeout=120)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 1
    assert info["warnings"] == ["Images were not saved: Not a directory."]
    assert str(server["root"]) not in r.text


def test_options_store_only_known_names_with_checked_types(server):
    api = server["api"]
    options = requests.get(api + "/options", timeout=30).json()
    assert options["send_seed"] is True and options["samples_format"] == "png"
    assert options["CLIP_stop_at_last_layers"] == 1 and options["eta_noise_seed_delta"] == 0
    r = requests.post(api + "/options", json={"junk_" + str(i): "x" * 10_000 for i in range(50)}, timeout=30)
    assert r.status_code == 200 and len(r.json()["ignored"]) == 50
    assert not any(k.startswith("junk_") for k in requests.get(api + "/options", timeout=30).json())
    r = requests.post(api + "/options", json={"CLIP_stop_at_last_layers": "two"}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "CLIP_stop_at_last_layers"
    docs = requests.get(server["api"].removesuffix("/sdapi/v1") + "/openapi.json", timeout=30).json()
    assert "Implemented:" in docs["paths"]["/options"]["get"]["description"]


REFUSED = [("restore_faces", True), ("alwayson_scripts", {"x": {}}), ("firstpass_image", "iVBORw0KGgo="),  # no hires
           ("refiner_checkpoint", "no-such-model"), ("latent_mask", "iVBORw0KGgo="), ("s_min_uncond", True),
           ("mask_round", "no")]


@pytest.mark.parametrize("field, value", REFUSED, ids=[f for f, _ in REFUSED])
def test_unimplemented_fields_are_refused_naming_them(server, field, value):
    r = requests.post(server["api"] + "/txt2img", json={**SMALL, field: value}, timeout=60)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_unimplemented_fields_at_their_off_values_and_a1111_extras_are_accepted(server):
    off = {"restore_faces": False, "alwayson_scripts": {}, "s_min_uncond": 0, "initial_noise_multiplier": 1.0,
           "disable_extra_networks": False, "mask_round": True, "infotext": "", "firstpass_image": None,
           "refiner_checkpoint": "None", "refiner_switch_at": 0.8, "do_not_save_samples": True, "comments": {},
           "made_up_field": 1}
    r = requests.post(server["api"] + "/txt2img", json={**SMALL, **off}, timeout=120)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["warnings"] == ["unknown fields, not used: made_up_field"]


@pytest.mark.parametrize("body, field", [
    ({"steps": True}, "steps"), ({"width": 64.5}, "width"), ({"cfg_scale": "1e400"}, "cfg_scale"),
    ({"enable_hr": True, "denoising_strength": 1e-9}, "denoising_strength"),
], ids=["bool-steps", "fraction", "huge-float", "hires-schedule"])
def test_numbers_are_checked_before_any_work(server, body, field):
    r = requests.post(server["api"] + "/txt2img", json={**SMALL, **body}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == field, r.text


def test_numbers_json_cannot_hold_are_refused(server):
    for raw in (b'{"cfg_scale": 1e400}', b'{"seed": 1' + b"0" * 5000 + b"}"):
        r = _post_raw(server["api"], "/txt2img", raw)
        assert r.status_code == 422, r.text
    r = _post_raw(server["api"], "/extra-single-image", b'{"image": "", "upscaling_resize": 1e400}')
    assert r.status_code == 422


def test_a_body_without_content_length_is_capped_as_it_streams(server):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(70):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    r = requests.post(server["api"] + "/txt2img", data=chunks(), headers={"Content-Type": "application/json"},
                      timeout=120)
    assert r.status_code == 422 and "larger than 64 MB" in r.json()["detail"]


def test_styles_that_repeat_the_prompt_are_refused_before_they_grow(server):
    styles = server["root"] / "styles.csv"
    styles.write_text("name,prompt,negative_prompt\n" + "".join(f'd{i},"{{prompt}} {{prompt}}",\n' for i in range(30)))
    r = requests.post(server["api"] + "/txt2img", json={**SMALL, "styles": [f"d{i}" for i in range(30)]},
                      timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "styles"
    styles.unlink()


def test_options_cannot_grow_without_bound(server):
    api = server["api"]
    r = requests.post(api + "/options", json={"quicksettings_list": ["x" * 100_000]}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "quicksettings_list"
    # changes pixels, not done: refused
    r = requests.post(api + "/options", json={"img2img_color_correction": True}, timeout=30)
    assert r.status_code == 422 and "not implemented" in r.json()["detail"]
    assert requests.get(api + "/options", timeout=30).json()["img2img_color_correction"] is False


def test_sigma_options_come_from_the_request_unless_the_options_differ(server):
    """A1111's Sampler.initialize: the request's s_churn reaches Euler; an option other than its default wins."""
    api = server["api"]

    def image(**fields):
        r = requests.post(api + "/txt2img", json={**SMALL, **fields}, timeout=120)
        assert r.status_code == 200, r.text
        assert not json.loads(r.json()["info"])["warnings"]
        return r.json()["images"][0]

    plain, churned = image(), image(s_churn=0.7)
    assert churned != plain
    assert image(override_settings={"s_churn": 0.7}) == churned
    assert image(s_churn=0.3, override_settings={"s_churn": 0.7}) == churned


def test_answers_name_no_absolute_paths(server):
    api = server["api"]
    for path in ("/sd-models", "/loras", "/upscalers", "/cmd-flags", "/hypernetworks", "/sd-vae"):
        r = requests.get(api + path, timeout=30)
        assert r.status_code == 200 and str(server["root"]) not in r.text, path
    assert requests.get(api + "/sd-models", timeout=30).json()[0]["filename"].startswith("models/Stable-diffusion/")


def test_model_override_is_restored_afterwards(server):
    api = server["api"]
    before = requests.get(api + "/options", timeout=30).json()["sd_model_checkpoint"]
    override = {"sd_model_checkpoint": "sd2-v.safetensors"}
    r = requests.post(api + "/txt2img", json={**SMALL, "override_settings": override}, timeout=120)
    assert json.loads(r.json()["info"])["sd_model_name"] == "sd2-v"
    assert requests.get(api + "/options", timeout=30).json()["sd_model_checkpoint"] == before
    r = requests.post(api + "/txt2img", json=SMALL, timeout=120)
    assert json.loads(r.json()["info"])["sd_model_name"] == "sd1"
    r = requests.post(api + "/txt2img", json={**SMALL, "override_settings": override,
                                              "override_settings_restore_afterwards": False}, timeout=120)
    assert requests.get(api + "/options", timeout=30).json()["sd_model_checkpoint"].startswith("sd2-v")
    requests.post(api + "/options", json={"sd_model_checkpoint": before}, timeout=120).raise_for_status()


def test_interrupted_request_returns_the_partial_image(server):
    api = server["api"]
    answer = {}
    thread = threading.Thread(target=lambda: answer.setdefault("r", requests.post(
        api + "/txt2img", json={**SMALL, "steps": 150, "width": 128, "height": 128}, timeout=300)))
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline:
        state = requests.get(api + "/progress", timeout=10).json()["state"]
        if state["sampling_step"] >= 2:
            break
        time.sleep(0.05)
    requests.post(api + "/interrupt", timeout=10).raise_for_status()
    thread.join(300)
    body = answer["r"].json()
    info = json.loads(body["info"])
    assert answer["r"].status_code == 200 and info["interrupted"] is True
    assert len(body["images"]) == 1


def test_control_endpoints_answer_while_many_requests_wait(server):
    api = server["api"]
    done = []

    def post():
        done.append(requests.post(api + "/txt2img", json={**SMALL, "steps": 6}, timeout=600).status_code)

    threads = [threading.Thread(target=post) for _ in range(48)]
    for t in threads:
        t.start()
    deadline = time.time() + 60
    while requests.get(api + "/progress", timeout=10).json()["state"]["job_count"] < 40 and time.time() < deadline:
        time.sleep(0.1)
    # With 48 requests waiting (A1111's server has 40 worker threads), these must not queue behind them.
    assert requests.get(api + "/progress", timeout=2).json()["state"]["job_count"] >= 40
    assert requests.post(api + "/skip", timeout=2).status_code == 200
    assert requests.get(api + "/options", timeout=2).status_code == 200
    assert requests.post(api + "/interrupt", timeout=2).status_code == 200
    for t in threads:
        t.join(600)
    # The skip may end the running job just before the interrupt, which then stops the next job before its first
    # step: that one answers 409 ("interrupted before it made anything"); every other request makes its image.
    assert len(done) == 48 and done.count(200) >= 47 and set(done) <= {200, 409}


def test_selecting_a_broken_checkpoint_is_a_4xx(server):
    api = server["api"]
    r = requests.post(api + "/options", json={"sd_model_checkpoint": "broken.safetensors"}, timeout=60)
    assert r.status_code == 422 and "broken.safetensors" in r.json()["detail"]
    assert str(server["root"]) not in r.text
    r = requests.post(api + "/txt2img", json=SMALL, timeout=120)
    assert r.status_code == 200 and json.loads(r.json()["info"])["sd_model_name"] == "sd1"
