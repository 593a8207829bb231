"""img2img and inpainting on the tiny real-layout checkpoints, with A1111's semantics."""

import io

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.generation import image_ops
from backend.generation.requests import GenerationRequest, MaskedContent, ResizeMode


def _picture(w=64, h=64):
    rng = np.random.default_rng(0)
    base = np.zeros((h, w, 3), dtype=np.uint8)
    base[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(255, 0, h, dtype=np.uint8)[:, None]
    base[..., 2] = rng.integers(0, 255, (h, w), dtype=np.uint8)
    return Image.fromarray(base)


def _square_mask(w=64, h=64, box=(16, 16, 40, 40)):
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, box)
    return mask


def _req(**kw):
    base = dict(prompt="a cat", steps=4, width=64, height=64, seed=7, sampler_name="Euler",
                checkpoint="sd1.safetensors", save_images=False, init_image=_picture(), denoising_strength=0.75)
    base.update(kw)
    return GenerationRequest(**base)


def _px(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_every_resize_mode_gives_the_requested_size(service, mode):
    result = service.generate(_req(init_image=_picture(96, 48), width=64, height=80, resize_mode=mode))
    assert result.images[0].size == (64, 80)
    assert "Denoising strength: 0.75" in result.infotexts[0]


def test_resize_and_fill_stretches_edge_pixels():
    image = Image.new("RGB", (40, 20), "red")
    image.paste((0, 0, 255), (0, 19, 40, 20))  # blue bottom row
    filled = image_ops.resize_image(image, 40, 40, ResizeMode.RESIZE_AND_FILL)
    assert filled.getpixel((20, 0)) == (255, 0, 0)
    assert filled.getpixel((20, 39)) == (0, 0, 255)


def test_crop_and_resize_crops_the_centre():
    image = Image.new("RGB", (60, 20), "red")
    image.paste((0, 255, 0), (20, 0, 40, 20))
    cropped = image_ops.resize_image(image, 20, 20, ResizeMode.CROP_AND_RESIZE)
    assert cropped.getpixel((10, 10)) == (0, 255, 0)


@pytest.mark.parametrize("checkpoint", ["sd2-v.safetensors", "sdxl.safetensors", "sd1-inpainting.safetensors"])
def test_img2img_works_for_every_family(service, checkpoint):
    result = service.generate(_req(checkpoint=checkpoint))
    assert result.images[0].size == (64, 64)


def test_img2img_is_reproducible_and_strength_zero_keeps_the_picture(service):
    a = service.generate(_req(sampler_name="Euler a")).images[0]
    b = service.generate(_req(sampler_name="Euler a")).images[0]
    assert np.array_equal(_px(a), _px(b))
    untouched = service.generate(_req(denoising_strength=0.0)).images[0]
    # Only the VAE round trip separates it from the input.
    assert untouched.size == (64, 64)


@pytest.mark.parametrize(("checkpoint", "sampler"), [("sd1.safetensors", "Euler"), ("sd1-inpainting.safetensors", "Euler"),
                                                    ("sd1.safetensors", "DDIM"), ("sd1.safetensors", "PLMS"),
                                                    ("sd1.safetensors", "LCM")])
def test_outside_the_mask_equals_the_input_exactly(service, checkpoint, sampler):
    mask = _square_mask()
    result = service.generate(_req(checkpoint=checkpoint, mask=mask, mask_blur=0, denoising_strength=1.0,
                                   sampler_name=sampler))
    out, src = _px(result.images[0]), _px(_picture())
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], src[outside])
    assert np.abs(out[~outside] - src[~outside]).max() > 10


def test_blurred_mask_blends_and_far_pixels_stay(service):
    mask = _square_mask()
    result = service.generate(_req(mask=mask, mask_blur=4))
    out, src = _px(result.images[0]), _px(_picture())
    assert np.array_equal(out[:4], src[:4])  # far from the mask
    assert not np.array_equal(out[14:18, 20:36], src[14:18, 20:36])  # just outside: blended


def test_masked_content_modes_run_and_differ(service):
    results = {}
    for content in MaskedContent:
        results[content] = _px(service.generate(_req(mask=_square_mask(), mask_blur=0, inpainting_fill=content,
                                                      denoising_strength=0.5)).images[0])
    assert not np.array_equal(results[MaskedContent.LATENT_NOTHING], results[MaskedContent.LATENT_NOISE])
    assert not np.array_equal(results[MaskedContent.FILL], results[MaskedContent.ORIGINAL])


def test_only_masked_crops_and_pastes_back_in_place(service):
    original = _picture(128, 96)
    mask = _square_mask(128, 96, (80, 50, 100, 70))
    result = service.generate(_req(init_image=original, mask=mask, mask_blur=0, inpaint_full_res=True,
                                   inpaint_full_res_padding=8, denoising_strength=1.0))
    out, src = _px(result.images[0]), _px(original)
    assert result.images[0].size == (128, 96)  # the original's size, as A1111 does
    changed = np.argwhere(np.abs(out - src).max(axis=-1) > 0)
    assert changed.size and changed[:, 0].min() >= 50 and changed[:, 0].max() < 70
    assert changed[:, 1].min() >= 80 and changed[:, 1].max() < 100
    assert "Inpaint area: Only masked" in result.infotexts[0] and "Masked area padding: 8" in result.infotexts[0]


def test_crop_region_grows_to_the_aspect_ratio():
    region = image_ops.crop_region(_square_mask(200, 100, (90, 40, 110, 60)), 0, 64, 64)
    x1, y1, x2, y2 = region
    assert x2 - x1 == y2 - y1 == 20


def test_invert_mask_repaints_the_other_side(service):
    mask = _square_mask()
    result = service.generate(_req(mask=mask, mask_blur=0, inpainting_mask_invert=True, denoising_strength=1.0))
    out, src = _px(result.images[0]), _px(_picture())
    inside = np.asarray(mask) > 0
    assert np.array_equal(out[inside], src[inside])


def test_rgba_alpha_mask_and_other_size_mask(service):
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((255, 255, 255, 255), (8, 8, 20, 20))
    prepared = image_ops.prepare_mask(rgba, (64, 64), invert=False)
    assert prepared.size == (64, 64)
    assert prepared.getpixel((28, 28)) == 255 and prepared.getpixel((2, 2)) == 0
    result = service.generate(_req(mask=rgba, mask_blur=0))
    assert result.images[0].size == (64, 64)


def test_inpainting_infotext_and_reproducibility(service):
    req = dict(mask=_square_mask(), inpainting_fill=MaskedContent.LATENT_NOISE, sampler_name="Euler a")
    a = service.generate(_req(**req))
    b = service.generate(_req(**req))
    assert np.array_equal(_px(a.images[0]), _px(b.images[0]))
    for part in ("Denoising strength: 0.75", "Mask blur: 4", "Masked content: latent noise"):
        assert part in a.infotexts[0]


def test_empty_mask_is_a_clear_error(service):
    with pytest.raises(InvalidRequest, match="mask is empty"):
        service.generate(_req(mask=Image.new("L", (64, 64), 0)))


def test_bad_uploads_are_rejected_with_a_specific_message():
    with pytest.raises(InvalidRequest, match="init_image: not a readable image"):
        image_ops.decode_image(b"%PDF-1.4 not an image", "init_image", 1_000_000)
    buf = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buf, format="PNG")
    with pytest.raises(InvalidRequest, match="larger than the configured maximum"):
        image_ops.decode_image(buf.getvalue(), "init_image", 200 * 200)
    assert image_ops.decode_image(buf.getvalue(), "init_image", 1_000_000).size == (300, 300)


def test_outputs_go_to_img2img_folder(service):
    result = service.generate(_req(save_images=True, mask=_square_mask()))
    assert result.paths[0].parent.parent.name == "img2img-images"


def test_several_init_images_make_one_batch_a_picture_per_image(service):
    """A1111's init_images list: image i of the batch starts from picture i, with seed + i."""
    second = _picture().transpose(Image.FLIP_LEFT_RIGHT)
    result = service.generate(_req(more_init_images=(second,), batch_size=2))
    alone = [service.generate(_req(init_image=p, seed=s)).images[0] for p, s in ((_picture(), 7), (second, 8))]
    for ours, theirs in zip(result.images, alone, strict=True):
        assert np.abs(_px(ours) - _px(theirs)).max() <= 1  # batched or alone: float rounding at most
    assert np.abs(_px(result.images[0]) - _px(result.images[1])).max() > 10
    with pytest.raises(InvalidRequest, match="init_images"):
        service.submit(_req(more_init_images=(second,), batch_size=2, mask=_square_mask()))
    with pytest.raises(InvalidRequest, match="bad number of images"):
        service.submit(_req(more_init_images=(second,), batch_size=3))


@pytest.mark.parametrize("mask", [None, "square"])
def test_upscaler_for_img2img_enlarges_the_init_picture_as_a1111(service, mask):
    """A1111's `upscaler_for_img2img` option: a small init picture is enlarged with that upscaler (its passes,
    then LANCZOS to the size), the mask with LANCZOS alone. Same pixels as sending the picture enlarged
    beforehand with the same upscaler."""
    from backend.upscale.resize import upscale_image

    small = _picture(32, 32)
    extra = {"mask": _square_mask(32, 32, (8, 8, 20, 20)), "mask_blur": 0} if mask else {}
    extra["denoising_strength"] = 0.1  # the init picture shows through
    ours = service.generate(_req(init_image=small, img2img_upscaler="4x_tiny", **extra))
    enlarged = upscale_image(small, "4x_tiny", 64, 64, service.upscalers)
    if mask:
        extra["mask"] = extra["mask"].resize((64, 64), Image.LANCZOS)
    theirs = service.generate(_req(init_image=enlarged, **extra))
    assert np.array_equal(_px(ours.images[0]), _px(theirs.images[0]))
    plain = service.generate(_req(init_image=small, **extra))  # LANCZOS alone is another picture
    assert np.abs(_px(plain.images[0]) - _px(ours.images[0])).max() > 3


def test_an_unknown_upscaler_for_img2img_is_refused(service):
    with pytest.raises(InvalidRequest, match="upscaler_for_img2img.*unknown upscaler 'Nope'"):
        service.generate(_req(img2img_upscaler="Nope"))


@pytest.mark.parametrize("background", ["#ffffff", "#2040c0"])
def test_transparent_init_pictures_are_laid_over_the_background_colour(service, background):
    """A1111's images.flatten with img2img_background_color (white by default): a half-transparent RGBA init
    picture gives the same pixels as the picture already flattened onto that colour."""
    picture = _picture().convert("RGBA")
    alpha = np.zeros((64, 64), np.uint8)
    alpha[:, 32:] = 255
    alpha[:, 16:32] = 100
    picture.putalpha(Image.fromarray(alpha))
    flat = Image.new("RGBA", (64, 64), background)
    flat.alpha_composite(picture)
    low = {"denoising_strength": 0.1}
    ours = service.generate(_req(init_image=picture, img2img_background=background, **low))
    theirs = service.generate(_req(init_image=flat.convert("RGB"), **low))
    assert np.abs(_px(ours.images[0]) - _px(theirs.images[0])).max() <= 1
    dropped = service.generate(_req(init_image=picture.convert("RGB"), **low))  # alpha dropped: another picture
    assert np.abs(_px(ours.images[0]) - _px(dropped.images[0])).max() > 3


def test_a_bad_background_colour_is_refused(service):
    with pytest.raises(InvalidRequest, match="img2img_background_color"):
        service.generate(_req(img2img_background="not-a-colour"))


def test_inpainting_mask_weight_fades_the_masked_picture_an_inpainting_model_sees(service):
    """A1111's inpainting_image_conditioning: the picture is lerped towards the masked picture by the weight;
    at 0 the model sees the whole picture, at 1 the masked area is black-grey zero. The mask channel itself is
    the (rounded) mask either way; with mask_round off it stays soft."""
    import torch

    from backend.generation.img2img import _inpaint_channels

    model = service.models.get(service.registry.find_checkpoint("sd1-inpainting.safetensors"))
    from backend.generation.sampling import context_for

    context = context_for(service.resources, model)
    picture, mask = _picture(), _square_mask()
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    keep = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)[None, None] < 0.5

    def encoded(x):
        return context.encode(model, x).mode().float() * model.vae.config.scaling_factor

    whole = _inpaint_channels(context, model, picture, mask, weight=0.0)
    assert torch.allclose(whole[:, 1:].float(), encoded(pixels), atol=1e-5)
    masked = _inpaint_channels(context, model, picture, mask, weight=1.0)
    assert torch.allclose(masked[:, 1:].float(), encoded(pixels * keep), atol=1e-5)
    half = _inpaint_channels(context, model, picture, mask, weight=0.5)
    assert torch.allclose(half[:, 1:].float(), encoded(pixels * torch.where(keep, 1.0, 0.5)), atol=1e-5)
    assert torch.equal(whole[:, :1], masked[:, :1]) and set(masked[:, 0].unique().tolist()) == {0.0, 1.0}
    soft = _inpaint_channels(context, model, picture, Image.new("L", (64, 64), 100), rounded=False)
    assert torch.allclose(soft[:, 0], torch.full_like(soft[:, 0], 100 / 255))


def test_inpainting_mask_weight_changes_the_picture_and_is_named_as_a1111(service):
    req = dict(checkpoint="sd1-inpainting.safetensors", mask=_square_mask(), mask_blur=0)
    full = service.generate(_req(**req))
    half = service.generate(_req(inpainting_mask_weight=0.5, **req))
    assert not np.array_equal(_px(full.images[0]), _px(half.images[0]))  # the tiny model reacts weakly
    assert "Conditional mask weight: 1.0" in full.infotexts[0]
    assert "Denoising strength: 0.75, Conditional mask weight: 0.5" in half.infotexts[0]
    txt2img = service.generate(_req(checkpoint="sd1-inpainting.safetensors", init_image=None))
    assert "Conditional mask weight: 1.0" in txt2img.infotexts[0]  # A1111 names it for every 9-channel run
    assert "Conditional mask weight" not in service.generate(_req(mask=_square_mask())).infotexts[0]
    with pytest.raises(InvalidRequest, match="inpainting_mask_weight"):
        service.generate(_req(inpainting_mask_weight=1.5, **req))
