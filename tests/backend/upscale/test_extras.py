"""Extras: A1111's postprocessing upscale (scale by, scale to with a centred crop, a blended second upscaler),
Lanczos equal to PIL's resize exactly, no upscaler = the picture unchanged, clear refusals."""

import numpy as np
import pytest
from PIL import Image

from backend.errors import Forbidden, InvalidRequest
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


@pytest.fixture(scope="module")
def local_service(models_dir, tmp_path_factory):
    """A backend served to this machine alone: the only kind that may read and write server folders."""
    from tests.conftest import build_backend

    svc = build_backend(models_dir, tmp_path_factory.mktemp("outputs"), local_only=True)
    yield svc
    svc.shutdown()


def test_batch_from_a_folder_keeps_names_and_never_overwrites(local_service, tmp_path):
    service = local_service
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


def test_batch_from_a_folder_refuses_what_is_not_a_folder_of_pictures(local_service, tmp_path):
    service = local_service
    with pytest.raises(InvalidRequest, match="input_dir: is not a folder"):
        service.extras_from_folder(str(tmp_path / "missing"), "", ExtrasRequest(upscaler_1="Nearest"))
    with pytest.raises(InvalidRequest, match="has no pictures"):
        service.extras_from_folder(str(tmp_path), "", ExtrasRequest(upscaler_1="Nearest"))


def test_server_folders_are_refused_on_every_call_unless_served_to_this_machine_alone(service, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    Image.new("RGB", (8, 8)).save(source / "a.png")
    with pytest.raises(Forbidden, match="Batch from Directory"):
        service.extras_from_folder(str(source), str(tmp_path / "out"), ExtrasRequest(upscaler_1="Nearest"))
    with pytest.raises(Forbidden, match="Open folder"):
        service.open_outputs_folder("txt2img")
    assert not (tmp_path / "out").exists()


def test_a_folder_batch_reads_one_picture_at_a_time_and_keeps_results_only_when_asked(local_service, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for n in range(3):
        Image.new("RGB", (8, 8), (n * 80, 0, 0)).save(source / f"p{n}.png")
    result = local_service.extras_from_folder(str(source), str(target), ExtrasRequest(upscaler_1="Nearest"),
                                              keep_images=False)
    assert result.images == [] and result.count == 3
    assert sorted(p.name for p in target.iterdir()) == ["p0.png", "p1.png", "p2.png"]


def test_extras_keep_the_source_parameters_and_add_postprocessing(service):
    from backend.outputs import png_info

    source = _image()
    buffer = __import__("io").BytesIO()
    source.save(buffer, format="PNG", pnginfo=png_info({"parameters": "a cat\nSteps: 7, Seed: 5"}))
    buffer.seek(0)
    with Image.open(buffer) as opened:
        opened.load()
        result = service.extras([opened], ExtrasRequest(upscaler_1="Nearest"), save=True)
    assert result.parameters == ["a cat\nSteps: 7, Seed: 5"]
    saved = max((service.outputs.root / "extras-images").iterdir(), key=lambda p: p.stat().st_mtime)
    with Image.open(saved) as written:
        assert written.info["parameters"] == "a cat\nSteps: 7, Seed: 5"
        assert written.info["postprocessing"] == written.info["extras"] == result.infotexts[0]
        assert "Postprocess upscaler: Nearest" in written.info["postprocessing"]


@pytest.mark.parametrize("req, size, field", [
    (ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=8.0), (4096, 4096), "upscaling_resize"),
    (ExtrasRequest(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=100000, upscaling_resize_h=8), (64, 64),
     "upscaling_resize_w"),
    (ExtrasRequest(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=16384, upscaling_resize_h=8), (64, 64),
     "upscaling_resize"),  # 16384x8 fits the cap; covering it from 64x64 means 16384x16384
    (ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=float("inf")), (8, 8), "upscaling_resize"),
    (ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=0.0), (8, 8), "upscaling_resize"),
    (ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=-2.0), (8, 8), "upscaling_resize"),
    (ExtrasRequest(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=0), (8, 8), "upscaling_resize_w"),
    (ExtrasRequest(upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=True), (8, 8), "upscaling_resize_w"),
    (ExtrasRequest(upscaler_1="Lanczos", upscaler_2="Nearest", upscaler_2_visibility=float("nan")), (8, 8),
     "extras_upscaler_2_visibility"),
])
def test_sizes_are_capped_before_any_work(service, req, size, field):
    """Each is refused from the picture's size alone (no pixels are made), naming the field."""
    picture = Image.new("RGB", size)
    with pytest.raises(InvalidRequest) as refused:
        service.extras([picture], req)
    assert refused.value.field == field


def test_a_model_upscalers_overshoot_counts_toward_the_cap(service):
    """A x4 model covering 2x makes a 4x picture first (then shrinks it): that picture is what is capped."""
    from backend.upscale.extras import peak_size

    assert peak_size((1000, 1000), 2.0, 4.0) == (4000, 4000)
    assert peak_size((1000, 1000), 2.0, 2.0) == (2000, 2000)
    limit = service.settings.limits.max_extras_pixels
    side = int((limit / 16) ** 0.5) + 8  # 2x fits the cap, the model's 4x pass does not
    with pytest.raises(InvalidRequest, match="on the way"):
        service.extras([Image.new("RGB", (side, side))], ExtrasRequest(upscaler_1="4x_tiny", upscaling_resize=2.0))
