"""The extension's preprocessors, map fitting (resize modes, high-quality resize, pixel perfect), unit fields
and model files, checked against OpenCV and hand-made expectations."""

import hashlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from backend.control import images, preprocess, units
from backend.control.models import ControlNetLibrary, old_model_hash, to_diffusers_layout
from backend.errors import CheckpointError, InvalidRequest


def _gradient(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), (x + y) % 256], axis=2).astype(np.uint8)


def test_hwc3_composites_alpha_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (100, 0, 0, 255)
    rgba[0, 1] = (100, 0, 0, 0)
    out = images.hwc3(rgba)
    assert out[0, 0].tolist() == [100, 0, 0] and out[0, 1].tolist() == [255, 255, 255]
    assert images.hwc3(np.full((2, 2), 7, np.uint8)).shape == (2, 2, 3)


def test_resize_and_fill_pads_with_the_border_median():
    picture = _gradient(32, 64)
    out = images.fit(picture, "Resize and Fill", 64, 64)
    borders = np.concatenate([picture[0], picture[-1], picture[:, 0], picture[:, -1]])
    assert (out[:16] == np.median(borders, axis=0).astype(np.uint8)).all()
    assert np.array_equal(out[16:48], picture)


def test_crop_and_resize_keeps_the_centre_and_just_resize_stretches():
    picture = _gradient(64, 128)
    assert np.array_equal(images.fit(picture, "Crop and Resize", 64, 64), picture[:, 32:96])
    stretched = images.fit(picture, "Just Resize", 64, 64)
    assert np.array_equal(stretched, cv2.resize(picture, (64, 64), interpolation=cv2.INTER_AREA))
    up = images.fit(_gradient(16, 16), "Just Resize", 64, 64)
    assert np.array_equal(up, cv2.resize(_gradient(16, 16), (64, 64), interpolation=cv2.INTER_CUBIC))


def test_few_colours_resize_by_nearest_and_thin_edges_stay_binary():
    few = np.zeros((16, 16, 3), np.uint8)
    few[:, 5:] = (10, 200, 30)
    few[:, 11:] = (90, 90, 250)
    assert np.array_equal(images.fit(few, "Just Resize", 40, 40), cv2.resize(few, (40, 40),
                                                                             interpolation=cv2.INTER_NEAREST))
    edges = np.zeros((32, 32, 3), np.uint8)
    cv2.circle(edges, (16, 16), 10, (255, 255, 255), 1)
    out = images.fit(edges, "Just Resize", 64, 64)
    assert set(np.unique(out)) <= {0, 255} and 0 < (out[:, :, 0] > 0).sum() < 64 * 64 // 8


def test_pixel_perfect_resolution_follows_the_resize_mode():
    picture = np.zeros((768, 512, 3), np.uint8)
    assert images.pixel_perfect_resolution(picture, 512, 512, "Crop and Resize") == 512
    assert images.pixel_perfect_resolution(picture, 512, 512, "Resize and Fill") == 341


def test_canny_threshold_invert_and_xdog_are_the_extension_algorithms():
    picture = _gradient(64, 64)
    cv2.circle(picture, (30, 30), 12, (255, 255, 255), -1)
    run = lambda name, a=-1, b=-1: preprocess.run(  # noqa: E731
        preprocess.find(name), picture, *preprocess.find(name).settle(64, a, b), seed=1)
    assert np.array_equal(run("canny")[:, :, 0], cv2.Canny(picture, 100, 200))
    assert np.array_equal(run("canny", 50, 60)[:, :, 1], cv2.Canny(picture, 50, 60))
    assert np.array_equal(run("invert"), 255 - picture)
    assert np.array_equal(run("threshold")[:, :, 0], np.where(picture.min(axis=2) > 127, 255, 0))
    assert set(np.unique(run("scribble_xdog"))) <= {0, 255}
    assert np.array_equal(run("tile_resample", 2.0), cv2.resize(picture, (32, 32), interpolation=cv2.INTER_AREA))
    assert run("shuffle").shape == picture.shape and not np.array_equal(run("shuffle"), picture)
    assert run("t2ia_color_grid").shape == (64, 64, 3)
    assert run("lineart_standard").shape == (64, 64, 3)


def test_out_of_range_sliders_take_the_preprocessor_defaults():
    canny = preprocess.find("canny")
    assert canny.settle(-1, -1, -1) == (512, 100.0, 200.0)
    assert canny.settle(4096, 0, 300) == (512, 100.0, 200.0)
    assert preprocess.find("none").settle(-1, -1, -1) == (512, 0.5, 0.5)


def test_preprocessors_that_need_weights_are_refused_with_the_file_they_need():
    with pytest.raises(InvalidRequest, match="dpt_hybrid-midas"):
        preprocess.find("depth_midas")
    with pytest.raises(InvalidRequest, match="unknown preprocessor"):
        preprocess.find("sparkles")
    assert preprocess.sorted_preprocessors()[0].name == "none"
    assert preprocess.find("invert (from white bg & black line)").name == "invert"


def _decode(value, field):
    return Image.new("RGB", (8, 8)) if value == "img" else Image.new("RGB", (4, 4))


def test_unit_fields_aliases_and_defaults():
    assert units.from_fields({"module": "canny"}, "u", _decode) is None  # enabled is false unless sent
    unit = units.from_fields({"enabled": True, "input_image": "img", "lowvram": True, "guidance": 0.7,
                              "model": "m", "control_mode": 2, "resize_mode": "Envelope (Outer Fit)",
                              "module": "canny"}, "u", _decode)
    assert unit.image.size == (8, 8) and unit.low_vram and unit.guidance_end == 0.7
    assert unit.control_mode == "ControlNet is more important" and unit.resize_mode == "Resize and Fill"
    assert (unit.processor_res, unit.threshold_a, unit.threshold_b) == (512, 100.0, 200.0)
    with_mask = units.from_fields({"enabled": True, "image": {"image": "img", "mask": "img"}, "model": "m"}, "u",
                                  _decode)
    assert with_mask.mask is not None
    for bad, field in (({"weight": 2.5}, "u.weight"), ({"guidance_start": 0.9, "guidance_end": 0.1}, "guidance_start"),
                       ({"resize_mode": 7}, "u.resize_mode"), ({"enabled": "yes"}, "u.enabled"),
                       ({"image": "img", "mask_image": "small"}, "u.mask"),
                       ({"advanced_weighting": [1.0] * 13}, "u.advanced_weighting")):
        with pytest.raises(InvalidRequest, match=field.replace(".", r"\.")):
            units.from_fields({"enabled": True, "model": "m", **bad}, "u", _decode)


def test_infotext_round_trip():
    unit = units.ControlUnit(model="control_sd15_canny [fef5e48e]", module="canny", weight=0.5,
                             processor_res=512, threshold_a=100.0, threshold_b=200.0, pixel_perfect=True)
    fields = units.parse_infotext(unit.infotext())
    assert fields == {"module": "canny", "model": "control_sd15_canny [fef5e48e]", "weight": 0.5,
                      "resize_mode": "Crop and Resize", "processor_res": 512, "threshold_a": 100.0,
                      "threshold_b": 200.0, "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": True,
                      "control_mode": "Balanced"}


def test_model_files_hashes_and_other_control_models(tmp_path):
    folder = tmp_path / "ControlNet"
    (folder / "deep").mkdir(parents=True)
    data = bytes(range(256)) * 8192  # 2 MiB
    (folder / "deep" / "big.safetensors").write_bytes(data)
    assert old_model_hash(folder / "deep" / "big.safetensors") == \
        hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    (folder / "notes.txt").write_text("x")
    library = ControlNetLibrary(folder)
    assert [f.name for f in library.files()] == ["deep/big.safetensors"]
    assert library.find("big").title.startswith("big [")
    with pytest.raises(CheckpointError, match="T2I-Adapter"):
        to_diffusers_layout({"adapter.body.0.block1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="Control-LoRA"):
        to_diffusers_layout({"lora_controlnet": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="not a ControlNet"):
        to_diffusers_layout({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)})
    save_file({"x": torch.zeros(1)}, str(folder / "odd.safetensors"))
    library.refresh()
    assert len(library.files()) == 2


def test_sdxl_small_variant_with_fewer_transformer_layers_loads(tiny, tmp_path):
    """diffusers' "mid"/"small" SDXL ControlNets have fewer transformer layers than the UNet: read from the
    file's tensors, not assumed from the checkpoint."""
    from diffusers import ControlNetModel

    from backend.control.models import build_controlnet
    from backend.loading.checkpoint_file import read_state_dict
    from tests.fixtures.tiny_controlnets import HINT_CHANNELS, write_diffusers

    unet = tiny["sdxl"].unet
    config = {k: v for k, v in unet.config.items() if k in (
        "in_channels", "block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim",
        "attention_head_dim", "use_linear_projection", "addition_embed_type", "addition_time_embed_dim",
        "projection_class_embeddings_input_dim")}
    torch.manual_seed(4)
    small = ControlNetModel(**config, transformer_layers_per_block=(1, 1),
                            conditioning_embedding_out_channels=HINT_CHANNELS).eval()
    path = write_diffusers(small, tmp_path / "small.safetensors")
    built = build_controlnet(read_state_dict(path), torch.float32, unet.config, "small")
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([300.0]), torch.randn(1, 77, 128)
    added = {"text_embeds": torch.randn(1, 64), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    hint = torch.rand(1, 3, 64, 64)
    want = small(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, added_cond_kwargs=added, return_dict=False)
    got = built(x, t, encoder_hidden_states=ctx, controlnet_cond=hint, added_cond_kwargs=added, return_dict=False)
    assert all(torch.equal(a, b) for a, b in zip([*want[0], want[1]], [*got[0], got[1]], strict=True))
