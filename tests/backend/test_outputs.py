import datetime as dt

import numpy as np
import pytest
from PIL import Image

from backend.options import Options
from backend.outputs import FORMATS, OutputWriter, next_number, read_infotext


def test_a1111_layout_numbering_and_infotext(tmp_path):
    writer = OutputWriter(tmp_path)
    image = Image.new("RGB", (8, 8), "red")
    first = writer.save_image(image, "txt2img", 77, "a cat\nSteps: 1, Sampler: Euler, Seed: 77")
    second = writer.save_image(image, "txt2img", 78, "x")
    day = dt.date.today().isoformat()
    assert first == tmp_path / "txt2img-images" / day / "00000-77.png"
    assert second.name == "00001-78.png"
    assert read_infotext(Image.open(first)) == "a cat\nSteps: 1, Sampler: Euler, Seed: 77"
    grid = writer.save_grid(image, "img2img", "g")
    assert grid == tmp_path / "img2img-grids" / day / "grid-0000.png"


def test_counter_continues_from_highest_and_never_overwrites(tmp_path):
    writer = OutputWriter(tmp_path)
    folder = writer.folder("txt2img")
    folder.mkdir(parents=True)
    (folder / "00041-5.png").write_bytes(b"user's file")
    (folder / "notes.txt").write_text("keep")
    assert next_number(folder) == 42
    path = writer.save_image(Image.new("RGB", (8, 8)), "txt2img", 5, "t")
    assert path.name == "00042-5.png"
    assert (folder / "00041-5.png").read_bytes() == b"user's file"


def test_existing_target_is_skipped_not_replaced(tmp_path, monkeypatch):
    """A file that appears between counting and writing (another process) is kept; we take the next number."""
    writer = OutputWriter(tmp_path)
    folder = writer.folder("txt2img")
    folder.mkdir(parents=True)
    import backend.outputs as outputs

    monkeypatch.setattr(outputs, "next_number", lambda f: 0)
    (folder / "00000-1.png").write_bytes(b"precious")
    path = writer.save_image(Image.new("RGB", (8, 8)), "txt2img", 1, "t")
    assert path.name == "00001-1.png"
    assert (folder / "00000-1.png").read_bytes() == b"precious"
    assert not list(folder.glob("*.tmp"))


def test_saved_generation_carries_model_hash(service, models_dir):
    from backend.generation.requests import GenerationRequest

    result = service.generate(GenerationRequest(prompt="p", steps=2, width=64, height=64, seed=3,
                                                checkpoint="sd1.safetensors"))
    saved = Image.open(result.paths[0])
    checkpoint = service.registry.find_checkpoint("sd1.safetensors")
    assert f"Model hash: {checkpoint.short_hash}" in read_infotext(saved)
    assert result.paths[0].name.endswith("-3.png")


# ------------------------------------------------------------------ A1111's other formats

@pytest.mark.parametrize("extension", [f for f in FORMATS if f != "png"])
def test_formats_carry_the_infotext_as_a1111s_exif_user_comment(tmp_path, extension):
    """A1111 writes piexif's UserComment: b"UNICODE\\0" + UTF-16 big-endian; PNG Info reads it back."""
    options = Options()
    options.update({"samples_format": extension, "jpeg_quality": 90})
    writer = OutputWriter(tmp_path, options)
    text = "a café at night, <lora:x:0.5>\nSteps: 4, Seed: 7"
    path = writer.save_image(Image.new("RGB", (64, 48), (200, 30, 30)), "txt2img", 7, text)
    assert path.name == f"00000-7.{extension}"
    with Image.open(path) as saved:
        assert saved.format == {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}[extension]
        comment = saved.getexif().get_ifd(0x8769)[0x9286]
        assert comment == b"UNICODE\x00" + text.encode("utf-16-be")
        assert read_infotext(saved) == text


def test_quality_lossless_and_grid_format(tmp_path):
    options = Options()
    picture = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    sizes = {}
    for quality in (30, 95):
        options.update({"samples_format": "jpg", "jpeg_quality": quality})
        sizes[quality] = OutputWriter(tmp_path / str(quality), options).save_image(picture, "txt2img", 1, "x") \
            .stat().st_size
    assert sizes[30] < sizes[95]
    options.update({"samples_format": "webp", "webp_lossless": True, "grid_format": "jpg"})
    writer = OutputWriter(tmp_path / "lossless", options)
    with Image.open(writer.save_image(picture, "txt2img", 1, "x")) as saved:
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(picture))
    assert writer.save_grid(picture, "txt2img", "x").suffix == ".jpg"
