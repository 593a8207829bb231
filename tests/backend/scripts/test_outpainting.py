"""Poor man's outpainting and Outpainting mk2 on the tiny SD1 checkpoint: the picture grows to A1111's size, the
new border is generated, the picture inside stays pixel-exact."""

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.scripts.matched_noise import match_histogram, matched_noise
from backend.scripts.outpainting import Expansion


def _picture(w=64, h=64):
    rng = np.random.default_rng(5)
    base = np.zeros((h, w, 3), dtype=np.uint8)
    base[..., 0] = np.linspace(30, 220, w, dtype=np.uint8)[None, :]
    base[..., 1] = rng.integers(0, 255, (h, w), dtype=np.uint8)
    base[..., 2] = 90
    return Image.fromarray(base)


def _req(service, script, args, **kw):
    base = dict(prompt="a meadow", steps=3, width=64, height=64, seed=11, sampler_name="Euler",
                checkpoint="sd1.safetensors", save_images=False, init_image=_picture(), denoising_strength=0.8,
                script=service.script(script, args))
    base.update(kw)
    return GenerationRequest(**base)


def _px(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_expansion_grows_to_multiples_of_64_as_a1111():
    assert Expansion.of((64, 64), 32, ("left", "right", "up", "down")) == Expansion(32, 32, 32, 32)
    assert Expansion.of((72, 64), 8, ("left", "right")) == Expansion(28, 28, 0, 0)  # 72 + 16 -> 128
    assert Expansion.of((100, 64), 128, ("up",)) == Expansion(0, 0, 128, 0)


def test_poor_mans_outpainting_regenerates_the_border_and_keeps_the_inside(service):
    result = service.generate(_req(service, "Poor man's outpainting", [32, 1, 1, ["left", "right", "up", "down"]]))
    out = result.images[0]
    assert out.size == (128, 128)
    # kept: inside the mask's rectangle (inset by 2 x the blur) and the blur's reach (2.5 sigma)
    inside = _px(out)[32 + 7 : 96 - 7, 32 + 7 : 96 - 7]
    assert np.array_equal(inside, _px(_picture())[7:57, 7:57])
    assert np.abs(_px(out)[:16].astype(float) - 0).mean() > 10  # the new top rows are generated, not black
    info = result.infotexts[0]
    assert "Size: 64x64" in info and "Mask blur: 2" in info
    assert "Masked content" not in info  # "original": A1111 names only the other contents


def test_poor_mans_outpainting_in_one_direction_grows_only_there(service):
    result = service.generate(_req(service, "poor man's outpainting", [32, 0, 0, ["right"]]))
    out = result.images[0]
    assert out.size == (128, 64)  # 64 + 32 -> 128: the extra goes to the right
    assert np.array_equal(_px(out)[:, :32], _px(_picture())[:, :32])


def test_outpainting_mk2_grows_each_direction_with_matched_noise(service):
    result = service.generate(_req(service, "Outpainting mk2", ["", 32, 1, ["left", "down"], 1.0, 0.05],
                                   width=128, height=128))
    out = result.images[0]
    assert out.size == (128, 128)  # 64 + 32 -> 128 on each grown axis: the extra goes to the one side
    # the picture sits at the top right; kept beyond the rectangle's inset (1) and the blur's reach (2.5 x 4)
    assert np.array_equal(_px(out)[: 64 - 11, 64 + 11 :], _px(_picture())[: 64 - 11, 11:])
    assert _px(out)[64:, :64].std() > 5  # the corner grown last is generated from shaped noise
    assert "Mask blur: 4" in result.infotexts[0]  # 4 x the script's blur, across and down
    assert "Size: " in result.infotexts[0]


def test_matched_noise_keeps_the_picture_and_takes_its_colours():
    image = np.asarray(_picture(), dtype=np.float64) / 255
    mask = np.zeros_like(image)
    mask[:, 48:] = 1
    filled = matched_noise(image.copy(), mask)
    assert np.array_equal(filled[:, :48], image[:, :48])
    for c in range(3):  # the hole's values follow the kept picture's distribution
        assert abs(np.median(filled[:, 48:, c]) - np.median(image[:, :48, c])) < 0.1


def test_match_histogram_maps_quantiles():
    source = np.array([[0.0], [1.0], [2.0], [3.0]])
    reference = np.array([[10.0], [20.0], [30.0], [40.0]])
    assert match_histogram(source, reference)[:, 0].tolist() == [10.0, 20.0, 30.0, 40.0]


def test_bad_script_arguments_and_uses_are_refused(service):
    with pytest.raises(InvalidRequest, match="script_name: unknown script 'img2img alternative test'"):
        service.script("img2img alternative test")
    with pytest.raises(InvalidRequest, match="pixels to expand must be 8..256"):
        service.script("Poor man's outpainting", [512])
    with pytest.raises(InvalidRequest, match="direction"):
        service.script("Poor man's outpainting", [64, 4, 0, ["sideways"]])
    with pytest.raises(InvalidRequest, match="without a mask"):
        service.submit(_req(service, "Poor man's outpainting", [], mask=Image.new("L", (64, 64), 255)))
    with pytest.raises(InvalidRequest, match="smaller than the tile"):
        service.submit(_req(service, "Poor man's outpainting", [64]))


def test_outpainting_beyond_the_size_cap_is_refused_before_queueing(models_dir, tmp_path):
    """With uploads capped at 64x64 (so 128x128 for what the server makes), growing 64x64 by 64 on each side
    would make 192x192."""
    from backend.errors import InvalidRequest
    from backend.settings import Limits
    from tests.conftest import build_backend

    small = build_backend(models_dir, tmp_path, limits=Limits(max_upload_pixels=64 * 64))
    try:
        for script, args in (("Poor man's outpainting", [48]), ("Outpainting mk2", ["", 64])):
            with pytest.raises(InvalidRequest, match="outpainted picture would be"):
                small.submit(_req(small, script, args))
        assert small.queue.pending() == []
        small.submit(_req(small, "Poor man's outpainting", [16], steps=1)).wait()  # 64+16*2 -> 128x128 fits
    finally:
        small.shutdown()
