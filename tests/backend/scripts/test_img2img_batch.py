"""img2img Batch from folders on this machine: each picture (with its mask) as its own img2img request, results
under the pictures' names, never over a file already there; refused wherever server folders are not offered."""

import numpy as np
import pytest
from PIL import Image

from backend.errors import Forbidden, InvalidRequest
from backend.generation.requests import GenerationRequest


@pytest.fixture(scope="module")
def local_service(models_dir, tmp_path_factory):
    from tests.conftest import build_backend

    svc = build_backend(models_dir, tmp_path_factory.mktemp("outputs"), local_only=True)
    yield svc
    svc.shutdown()


def _req(**kw):
    base = dict(prompt="a harbour", steps=3, width=64, height=64, seed=9, sampler_name="Euler",
                checkpoint="sd1.safetensors", denoising_strength=0.6)
    base.update(kw)
    return GenerationRequest(**base)


def _folders(tmp_path):
    source, masks, target = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    for folder in (source, masks, target):
        folder.mkdir()
    rng = np.random.default_rng(4)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source / f"{name}.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(masks / "b.png")
    (target / "a.png").write_bytes(b"the user's own file")
    return source, masks, target


def test_each_picture_is_its_own_request(local_service, tmp_path):
    source, masks, target = _folders(tmp_path)
    request = local_service.img2img_batch(_req(), str(source), str(target), str(masks))
    result = local_service.generate(request)
    assert len(result.images) == 2
    # a.png has no mask of its name: A1111 takes the mask folder's first
    a = local_service.generate(_req(init_image=Image.open(source / "a.png"), mask=Image.open(masks / "b.png"),
                                    save_images=False)).images[0]
    b = local_service.generate(_req(init_image=Image.open(source / "b.png"), mask=Image.open(masks / "b.png"),
                                    save_images=False)).images[0]
    for ours, theirs in zip(result.images, (a, b), strict=True):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    assert (target / "a.png").read_bytes() == b"the user's own file"
    assert "Mask blur: 4" in Image.open(target / "b.png").info["parameters"]
    assert Image.open(target / "a-1.png").info["parameters"].startswith("a harbour\n")


def test_refused_where_server_folders_are_not_offered(service, tmp_path):
    source, masks, target = _folders(tmp_path)
    with pytest.raises(Forbidden, match="img2img Batch"):
        service.img2img_batch(_req(), str(source), str(target))
    script_request = local_service_request(source)
    with pytest.raises(Forbidden, match="img2img batch"):  # and again when such a request is submitted
        service.submit(script_request)


def local_service_request(source):
    """A batch request as a local server builds it, to submit to a listening one."""
    from backend.scripts import ScriptRun, img2img_batch

    settings = img2img_batch.BatchSettings((source / "a.png",), (), None, 4096 * 4096)
    return _req(init_image=Image.open(source / "a.png"), script=ScriptRun(img2img_batch.TITLE, settings, "img2img"))


def test_folders_must_hold_pictures(local_service, tmp_path):
    with pytest.raises(InvalidRequest, match="input_dir"):
        local_service.img2img_batch(_req(), str(tmp_path / "missing"))
    source, _, _ = _folders(tmp_path)
    with pytest.raises(InvalidRequest, match="mask_dir"):
        local_service.img2img_batch(_req(), str(source), "", str(tmp_path / "nothing-here"))
