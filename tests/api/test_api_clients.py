"""Third-party tools our users script with, unmodified, against the real server."""

import io

import pytest
from PIL import Image

from tests.server import running_app

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    with running_app(models_dir, tmp_path_factory.mktemp("clients") / "outputs", "--api", "--ckpt", "sd1",
                     ready_path="/sdapi/v1/progress") as base:
        yield base


def test_webuiapi_script(server, tmp_path):
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
    import base64

    import requests

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
