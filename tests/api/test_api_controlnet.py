"""ControlNet through the extension's API (alwayson_scripts.controlnet and /controlnet/...), over real HTTP
against `python app.py --api` on loopback: unchanged clients (webuiapi's ControlNetUnit shape) work."""

import json

import cv2
import numpy as np
import pytest
import requests
from PIL import Image

from tests.api.test_api import b64_png, decode
from tests.server import running_app

SMALL = {"prompt": "a castle", "negative_prompt": "blur", "steps": 4, "width": 64, "height": 64, "seed": 77,
         "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    with running_app(models_dir, tmp_path_factory.mktemp("cn") / "outputs", "--api", "--ckpt", "sd1",
                     ready_path="/sdapi/v1/progress") as base:
        yield base


def _picture() -> Image.Image:
    img = np.full((64, 64, 3), 60, np.uint8)
    cv2.circle(img, (30, 28), 14, (250, 40, 40), -1)
    cv2.rectangle(img, (8, 46), (56, 54), (20, 220, 90), -1)
    return Image.fromarray(img)


def _unit(**kw) -> dict:
    """The fields webuiapi's ControlNetUnit sends."""
    unit = {"input_image": b64_png(_picture()), "module": "canny", "model": "control_sd15_tiny", "weight": 1.0,
            "resize_mode": "Crop and Resize", "lowvram": False, "processor_res": 64, "threshold_a": 100,
            "threshold_b": 200, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": 0,
            "pixel_perfect": False, "enabled": True}
    unit.update(kw)
    return unit


def _txt2img(server, *units, **kw):
    body = {**SMALL, **kw, "alwayson_scripts": {"ControlNet": {"args": list(units)}}}
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
    body = {"controlnet_module": "canny", "controlnet_input_images": [b64_png(_picture())],
            "controlnet_processor_res": 64, "controlnet_threshold_a": 100, "controlnet_threshold_b": 200}
    r = requests.post(f"{server}/controlnet/detect", json=body, timeout=60)
    assert r.status_code == 200, r.text
    detected = np.asarray(decode(r.json()["images"][0]).convert("RGB"))
    assert np.array_equal(detected[:, :, 0], cv2.Canny(np.asarray(_picture()), 100, 200))
    bad = requests.post(f"{server}/controlnet/detect", json={**body, "controlnet_module": "openpose"}, timeout=60)
    assert bad.status_code == 422 and "body_pose_model.pth" in bad.text


def test_txt2img_with_a_unit_adds_its_map_and_infotext(server):
    r = _txt2img(server, _unit())
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 2 and len(info["infotexts"]) == 1  # the picture, then the detected map
    assert 'ControlNet 0: "Module: canny, Model: control_sd15_tiny, Weight: 1.0, Resize Mode: Crop and Resize, ' \
           'Processor Res: 64, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, ' \
           'Pixel Perfect: False, Control Mode: Balanced"' in info["infotexts"][0]
    plain = requests.post(f"{server}/sdapi/v1/txt2img", json=SMALL, timeout=300).json()
    assert body["images"][0] != plain["images"][0]
    no_map = _txt2img(server, _unit(save_detected_map=False)).json()
    assert len(no_map["images"]) == 1 and no_map["images"][0] == body["images"][0]
    # string and integer forms, and the new field names, give the same picture
    named = _unit(control_mode="Balanced", resize_mode=1, low_vram=False)
    named["image"] = named.pop("input_image")
    del named["lowvram"]
    assert _txt2img(server, named).json()["images"][0] == body["images"][0]
    both = _txt2img(server, _unit(image=named["image"]))
    assert both.status_code == 422 and "input_image" in both.text


def test_disabled_unit_is_pixel_equal_to_none(server):
    plain = requests.post(f"{server}/sdapi/v1/txt2img", json=SMALL, timeout=300).json()
    off = _txt2img(server, _unit(enabled=False)).json()
    assert off["images"] == plain["images"] and "ControlNet" not in json.loads(off["info"])["infotexts"][0]


def test_pasted_infotext_brings_the_unit_back(server):
    r = _txt2img(server, _unit(weight=0.7, guidance_end=0.8))
    text = json.loads(r.json()["info"])["infotexts"][0]
    info = requests.post(f"{server}/sdapi/v1/png-info", json={"image": r.json()["images"][0]}, timeout=60).json()
    assert info["parameters"]["ControlNet 0"].startswith("Module: canny, Model: control_sd15_tiny, Weight: 0.7")
    assert text == info["info"]


@pytest.mark.parametrize("unit, field", [
    (_unit(model="nope"), "controlnet.args[0].model"),
    (_unit(module="depth_midas"), "controlnet.args[0].module"),
    (_unit(module="no-such"), "controlnet.args[0].module"),
    (_unit(input_image=None), "controlnet.args[0].image"),
    (_unit(guidance_start=0.8, guidance_end=0.2), "controlnet.args[0].guidance_start"),
    (_unit(weight=3), "controlnet.args[0].weight"),
    (_unit(control_mode="Loud"), "controlnet.args[0].control_mode"),
    (_unit(model="diffusers_xl_tiny"), "controlnet.args[0].model"),
])
def test_bad_units_are_named_in_a_4xx(server, unit, field):
    r = _txt2img(server, unit)
    assert r.status_code == 422, r.text
    assert r.json().get("field") == field or field in r.text


def test_more_units_than_the_option_allows_are_refused(server):
    r = _txt2img(server, _unit(), _unit(), _unit(), _unit())
    assert r.status_code == 422 and "control_net_unit_count" in r.text
    other = requests.post(f"{server}/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"adetailer": {}}},
                          timeout=60)
    assert other.status_code == 422 and "adetailer" in other.text
