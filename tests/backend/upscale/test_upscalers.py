"""Model upscalers: tiny random ESRGAN (both key layouts, x4 and Real-ESRGAN x2) and SRVGG files equal a
functional reference forward pass; tiling joins as A1111's grid; hires fix and the API list them."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from backend.errors import CheckpointError
from backend.generation.requests import GenerationRequest
from backend.upscale.models import UpscalerLibrary, run_network, upscale_tiled
from backend.upscale.nets import build_network
from tests.conftest import build_backend
from tests.fixtures.tiny_upscalers import G, NF, conv_weights, old_esrgan


def _new_layout(old: dict, ups: int) -> dict:
    """The same tensors under the newer (basicsr) names."""
    new = {}
    for k, v in old.items():
        parts = k.split(".")
        if k.startswith("model.1.sub.") and "RDB" in k:
            new[f"body.{parts[3]}.rdb{parts[4][3]}.{parts[5]}.{parts[7]}"] = v
        elif k.startswith("model.1.sub."):
            new[f"conv_body.{parts[-1]}"] = v
    trunk = sorted({int(k.split(".")[1]) for k in old if k.count(".") == 2})
    names = ["conv_first"] + [f"conv_up{i + 1}" for i in range(ups)] + ["conv_hr", "conv_last"]
    for index, name in zip(trunk, names, strict=True):
        new[f"{name}.weight"], new[f"{name}.bias"] = old[f"model.{index}.weight"], old[f"model.{index}.bias"]
    return new


def _reference_rrdb(sd, x, unshuffle=1):
    """ESRGAN's forward written out on the old-layout tensors."""
    def conv(name, t):
        return F.conv2d(t, sd[name + ".weight"], sd[name + ".bias"], padding=1)

    lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    if unshuffle > 1:
        x = F.pixel_unshuffle(x, unshuffle)
    fea = conv("model.0", x)
    trunk = fea
    blocks = len({k.split(".")[3] for k in sd if ".RDB" in k})
    for b in range(blocks):
        rrdb_in = trunk
        for r in range(1, 4):
            feats = [trunk]
            for c in range(1, 5):
                feats.append(lrelu(conv(f"model.1.sub.{b}.RDB{r}.conv{c}.0", torch.cat(feats, 1))))
            trunk = conv(f"model.1.sub.{b}.RDB{r}.conv5.0", torch.cat(feats, 1)) * 0.2 + trunk
        trunk = trunk * 0.2 + rrdb_in
    fea = fea + conv(f"model.1.sub.{blocks}", trunk)
    indices = sorted({int(k.split(".")[1]) for k in sd if k.count(".") == 2})
    for index in indices[1:-2]:
        fea = lrelu(conv(f"model.{index}", F.interpolate(fea, scale_factor=2, mode="nearest")))
    return conv(f"model.{indices[-1]}", lrelu(conv(f"model.{indices[-2]}", fea)))


def _srvgg(convs=2, scale=4):
    sd = {}
    sd["body.0.weight"], sd["body.0.bias"] = conv_weights(NF, 3)
    sd["body.1.weight"] = torch.rand((NF,), generator=G) * 0.3
    for i in range(convs):
        sd[f"body.{2 + 2 * i}.weight"], sd[f"body.{2 + 2 * i}.bias"] = conv_weights(NF, NF)
        sd[f"body.{3 + 2 * i}.weight"] = torch.rand((NF,), generator=G) * 0.3
    last = 2 + 2 * convs
    sd[f"body.{last}.weight"], sd[f"body.{last}.bias"] = conv_weights(3 * scale * scale, NF)
    return sd


def _reference_srvgg(sd, x, scale=4):
    out = x
    convs = sorted(int(k.split(".")[1]) for k in sd if k.endswith(".bias"))
    for i in convs[:-1]:
        out = F.prelu(F.conv2d(out, sd[f"body.{i}.weight"], sd[f"body.{i}.bias"], padding=1), sd[f"body.{i + 1}.weight"])
    out = F.conv2d(out, sd[f"body.{convs[-1]}.weight"], sd[f"body.{convs[-1]}.bias"], padding=1)
    return F.pixel_shuffle(out, scale) + F.interpolate(x, scale_factor=scale, mode="nearest")


X = torch.rand((1, 3, 12, 16), generator=G)


def test_esrgan_both_layouts_equal_the_reference():
    old = old_esrgan()
    expected = _reference_rrdb(old, X)
    for sd in (old, _new_layout(old, 2), {"params_ema": _new_layout(old, 2)}):
        net = build_network(sd)
        assert net.scale == 4
        torch.testing.assert_close(net(X), expected, rtol=1e-5, atol=1e-5)


def test_real_esrgan_x2_unshuffles_its_input():
    old = old_esrgan(in_ch=12)
    net = build_network({"params_ema": _new_layout(old, 2)})
    assert net.scale == 2
    torch.testing.assert_close(net(X), _reference_rrdb(old, X, unshuffle=2), rtol=1e-5, atol=1e-5)


def test_srvgg_equals_the_reference():
    sd = _srvgg()
    net = build_network({"params": sd})
    assert net.scale == 4
    torch.testing.assert_close(net(X), _reference_srvgg(sd, X), rtol=1e-5, atol=1e-5)


def test_unsupported_architectures_are_refused_clearly():
    with pytest.raises(CheckpointError, match="SwinIR"):
        build_network({"layers.0.residual_group.blocks.0.attn.qkv.weight": torch.zeros(3, 3)})


def _image(w, h, seed=1):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_bgr_in_and_rounded_rgb_out():
    net = build_network(old_esrgan())
    image = _image(20, 12)
    bgr = torch.from_numpy(np.asarray(image)[:, :, ::-1].copy()).permute(2, 0, 1)[None].double() / 255
    with torch.no_grad():
        out = net.double()(bgr)[0].clamp(0, 1).numpy()
    expected = np.round(255.0 * np.moveaxis(out, 0, 2)).astype(np.uint8)[:, :, ::-1]
    assert np.abs(np.asarray(run_network(net, [image])[0], dtype=int) - expected).max() <= 1


def test_tiles_join_like_a1111s_grid():
    """Inside a tile the tiled result equals the tile's own pass; across an overlap it is a linear blend."""
    net = build_network(_srvgg())
    image = _image(40, 24)
    tiled = np.asarray(upscale_tiled(net, image, tile=24, overlap=8), dtype=int)
    first = np.asarray(run_network(net, [image.crop((0, 0, 24, 24))])[0], dtype=int)
    second = np.asarray(run_network(net, [image.crop((16, 0, 40, 24))])[0], dtype=int)
    assert tiled.shape == (96, 160, 3)
    assert np.array_equal(tiled[:, :64], first[:, :64])  # before the overlap: the first tile
    assert np.array_equal(tiled[:, 96:], second[:, 32:])  # after it: the second
    middle = tiled[:, 64:96]
    low, high = np.minimum(first[:, 64:96], second[:, :32]), np.maximum(first[:, 64:96], second[:, :32])
    assert ((middle >= low - 1) & (middle <= high + 1)).all()


def test_tiles_run_in_batches_as_one_at_a_time():
    net = build_network(_srvgg())
    image = _image(80, 56)
    batched = np.asarray(upscale_tiled(net, image, tile=24, overlap=8, batch=8), dtype=int)
    single = np.asarray(upscale_tiled(net, image, tile=24, overlap=8, batch=1), dtype=int)
    assert np.abs(batched - single).max() <= 1


class _SmallMemory(torch.nn.Module):
    """The network, on a device that runs out of memory above two tiles at a time."""

    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_out_of_memory_runs_fewer_tiles_at_a_time():
    net = build_network(_srvgg())
    image = _image(80, 56)
    small = _SmallMemory(net)
    result = np.asarray(upscale_tiled(small, image, tile=24, overlap=8, batch=8), dtype=int)
    assert small.batches[:3] == [8, 4, 2] and max(small.batches[3:]) <= 2
    assert np.abs(result - np.asarray(upscale_tiled(net, image, tile=24, overlap=8, batch=1), dtype=int)).max() <= 1


def test_library_runs_the_network_on_its_device_in_its_dtype(upscaler_models):
    library = UpscalerLibrary([upscaler_models / "RealESRGAN"], dtype=torch.float16)
    image = _image(32, 32)
    half = np.asarray(library.upscale(image, "R-ESRGAN AnimeVideo", 4.0), dtype=int)
    assert next(library.network(library.find("R-ESRGAN AnimeVideo")).parameters()).dtype == torch.float16
    full = np.asarray(UpscalerLibrary([upscaler_models / "RealESRGAN"]).upscale(image, "R-ESRGAN AnimeVideo", 4.0),
                      dtype=int)
    assert np.abs(half - full).mean() < 1.0


def test_an_fp16_overflow_is_computed_again_in_fp32():
    state = _srvgg()
    state["body.0.weight"] = state["body.0.weight"] * 3e5  # the first convolution passes fp16's range ...
    state["body.2.weight"] = state["body.2.weight"] / 3e5  # ... and the next brings it back (PReLU scales)
    net = build_network(state)
    expected = np.asarray(run_network(net, [_image(16, 16)])[0], dtype=int)
    net.half()
    got = np.asarray(run_network(net, [_image(16, 16)])[0], dtype=int)
    assert next(net.parameters()).dtype == torch.float32
    assert np.abs(got - expected).max() <= 2


@pytest.fixture(scope="module")
def upscaler_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscaler-models")
    (root / "ESRGAN").mkdir()
    (root / "RealESRGAN").mkdir()
    torch.save(old_esrgan(), root / "ESRGAN" / "4x_tiny.pth")
    save_file({k: v.contiguous() for k, v in _srvgg().items()},
              str(root / "RealESRGAN" / "realesr-animevideov3.safetensors"))
    return root


def test_library_names_and_hires_with_a_model_upscaler(upscaler_models, models_dir, tmp_path):
    library = UpscalerLibrary([upscaler_models / "ESRGAN", upscaler_models / "RealESRGAN"])
    assert [(f.name, f.scale) for f in library.all()] == [("4x_tiny", 4), ("R-ESRGAN AnimeVideo", 4)]
    image = _image(32, 32)
    assert library.upscale(image, "4x_tiny", 2.0).size == (64, 64)  # a 4x pass, then LANCZOS down to 2x
    models = tmp_path / "models"
    models.mkdir()
    (models / "Stable-diffusion").symlink_to(models_dir / "Stable-diffusion", target_is_directory=True)
    for folder in ("ESRGAN", "RealESRGAN"):
        (models / folder).symlink_to(upscaler_models / folder, target_is_directory=True)
    svc = build_backend(models, tmp_path / "out")
    assert svc.upscaler_names()[-2:] == ["4x_tiny", "R-ESRGAN AnimeVideo"]
    try:
        result = svc.generate(GenerationRequest(prompt="a hill", steps=2, width=64, height=64, seed=2,
                                                sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False,
                                                enable_hr=True, hr_upscaler="4x_tiny", denoising_strength=0.5))
    finally:
        svc.shutdown()
    assert result.images[0].size == (128, 128) and "Hires upscaler: 4x_tiny" in result.infotexts[0]
