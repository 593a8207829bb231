"""Extras: A1111's postprocessing upscale (scale by, scale to with a centred crop, a blended second upscaler),
Lanczos equal to PIL's resize exactly, no upscaler = the picture unchanged, clear refusals."""

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.upscale.extras import ExtrasRequest


def _image(w=40, h=24):
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_lanczos_by_factor_is_pils_resize(service):
    image = _image()
    result = service.extras([image], ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=2.0))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(image.resize((80, 48), Image.LANCZOS)))
    assert result.infotexts[0] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"


def test_scale_to_a_box_crops_centred(service):
    image = _image()
    result = service.extras([image], ExtrasRequest(resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64,
                                                   upscaler_1="Nearest"))
    scaled = image.resize((int(40 * 64 / 24), 64), Image.NEAREST)  # covers the box: 106x64
    scaled = scaled.resize((int(40 * 64 / 24) // 8 * 8, 64), Image.LANCZOS)  # then A1111's //8*8: 104x64
    expected = Image.new("RGB", (64, 64))
    expected.paste(scaled, (32 - scaled.width // 2, 0))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(expected))
    assert "Postprocess upscale to: 64x64" in result.infotexts[0] and "Postprocess crop to: 64x64" in result.infotexts[0]


def test_second_upscaler_is_blended_and_none_changes_nothing(service):
    image = _image()
    one = service.extras([image], ExtrasRequest(upscaler_1="Lanczos")).images[0]
    two = service.extras([image], ExtrasRequest(upscaler_1="Nearest")).images[0]
    blend = service.extras([image], ExtrasRequest(upscaler_1="Lanczos", upscaler_2="Nearest",
                                                  upscaler_2_visibility=0.3)).images[0]
    assert np.array_equal(np.asarray(blend), np.asarray(Image.blend(one, two, 0.3)))
    assert np.array_equal(np.asarray(service.extras([image], ExtrasRequest()).images[0]), np.asarray(image))


def test_unknown_upscalers_and_face_restoration_are_refused(service):
    with pytest.raises(InvalidRequest, match="upscaler_1: unknown upscaler 'SwinIR_4x'"):
        service.extras([_image()], ExtrasRequest(upscaler_1="SwinIR_4x"))
    with pytest.raises(InvalidRequest, match="face restoration"):
        service.extras([_image()], ExtrasRequest(upscaler_1="Lanczos", face_restoration=0.5))


def test_batch_from_a_folder_keeps_names_and_never_overwrites(service, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    target.mkdir()
    Image.new("RGB", (16, 8), "red").save(source / "a.png")
    Image.new("RGB", (8, 8), "blue").save(source / "b.jpg")
    (source / "broken.png").write_bytes(b"not a picture")
    (source / "notes.txt").write_text("ignored: not a picture type")
    (target / "a.png").write_bytes(b"the user's own file")
    req = ExtrasRequest(upscaler_1="Nearest", upscaling_resize=2.0)
    result = service.extras_from_folder(str(source), str(target), req)
    assert [image.size for image in result.images] == [(32, 16), (16, 16)]
    assert (target / "a.png").read_bytes() == b"the user's own file"
    assert Image.open(target / "a-1.png").size == (32, 16) and Image.open(target / "b.png").size == (16, 16)
    assert any("broken.png" in w for w in result.warnings)
    assert "Postprocess upscaler: Nearest" in Image.open(target / "b.png").info["postprocessing"]


def test_batch_from_a_folder_refuses_what_is_not_a_folder_of_pictures(service, tmp_path):
    with pytest.raises(InvalidRequest, match="input_dir: .* is not a folder"):
        service.extras_from_folder(str(tmp_path / "missing"), "", ExtrasRequest(upscaler_1="Nearest"))
    with pytest.raises(InvalidRequest, match="has no pictures"):
        service.extras_from_folder(str(tmp_path), "", ExtrasRequest(upscaler_1="Nearest"))
