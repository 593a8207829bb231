"""SD upscale on the tiny SD1 checkpoint: upscale, img2img tile by tile with A1111's seeds, join the tiles."""

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.scripts.sd_upscale import SdUpscaleSettings


def _picture():
    rng = np.random.default_rng(8)
    return Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _req(**kw):
    base = dict(prompt="a harbour", steps=3, width=64, height=64, seed=30, sampler_name="Euler",
                checkpoint="sd1.safetensors", save_images=False, init_image=_picture(), denoising_strength=0.5)
    base.update(kw)
    return GenerationRequest(**base)


def test_arguments_in_a1111_order_with_index_or_name(service):
    names = service.image_upscaler_names()
    assert names[:3] == ["None", "Lanczos", "Nearest"]
    assert service.script("SD upscale", ["", 32, 1, 3.0]).settings == SdUpscaleSettings(32, "Lanczos", 3.0)
    assert service.script("sd upscale", ["", 32, "nearest"]).settings == SdUpscaleSettings(32, "Nearest", 2.0)
    assert service.script("SD upscale").settings == SdUpscaleSettings(64, "None", 2.0)
    with pytest.raises(InvalidRequest, match="unknown upscaler 'ESRGAN_4x'"):
        service.script("SD upscale", ["", 32, "ESRGAN_4x"])
    with pytest.raises(InvalidRequest, match="upscaler index 9"):
        service.script("SD upscale", ["", 32, 9])


def test_tiles_are_img2img_jobs_joined_with_blends(service):
    script = service.script("SD upscale", ["", 16, "Lanczos", 2.0])
    result = service.generate(_req(script=script))
    out = np.asarray(result.images[0], dtype=np.int16)
    assert out.shape == (128, 128, 3)  # 3 x 3 tiles of 64 at 0, 32, 64
    upscaled = _picture().resize((128, 128), Image.LANCZOS)
    for (x, y), seed in (((0, 0), 30), ((32, 0), 31)):  # each tile its own seed, counting up
        tile = service.generate(_req(init_image=upscaled.crop((x, y, x + 64, y + 64)), seed=seed)).images[0]
        # the part of the tile that neither blends into the one before nor under the one after
        first = 16 if x else 0
        expected = np.asarray(tile, dtype=np.int16)[:32, first:32]
        assert np.array_equal(out[y : y + 32, x + first : x + 32], expected)
    info = result.infotexts[0]
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in info and "Size: 64x64" in info
    assert result.seeds == [30]


def test_none_keeps_the_size_as_a1111(service):
    result = service.generate(_req(script=service.script("SD upscale", ["", 16, "None", 2.0])))
    assert result.images[0].size == (64, 64)


def test_overlap_must_be_smaller_than_the_tile(service):
    with pytest.raises(InvalidRequest, match="tile overlap"):
        service.submit(_req(script=service.script("SD upscale", ["", 64, "Lanczos"])))


def test_a_picture_the_upscale_would_make_too_large_is_refused_before_queueing(service):
    assert service.settings.limits.max_extras_pixels == 8192 * 8192
    big = Image.new("RGB", (4096, 4096))  # the largest upload; x3 would be 12288x12288
    with pytest.raises(InvalidRequest, match="upscaled picture would be"):
        service.submit(_req(init_image=big, script=service.script("SD upscale", ["", 16, "Lanczos", 3.0])))
    with pytest.raises(InvalidRequest, match="upscaled picture would be"):  # x2 fits; the x4 model's pass does not
        service.submit(_req(init_image=Image.new("RGB", (2100, 2100)),
                            script=service.script("SD upscale", ["", 16, "4x_tiny", 2.0])))
    assert service.queue.pending() == []


@pytest.mark.parametrize("args", [["", 1e400, "Lanczos", 2.0], ["", 16, "Lanczos", float("inf")],
                                  ["", -5, "Lanczos", 2.0], ["", True, "Lanczos", 2.0]])
def test_script_numbers_that_cannot_be_are_refused(service, args):
    with pytest.raises(InvalidRequest, match="script_args"):
        service.script("SD upscale", args)
