"""Pixel helpers of img2img and inpainting against A1111's own arithmetic (modules/images.py resize_image,
modules/masking.py, processing.py's mask blur and apply_overlay); the expected numbers below were worked out
from A1111's formulas."""

import numpy as np
import pytest
from PIL import Image

from backend.generation import image_ops
from backend.generation.requests import ResizeMode


def _picture(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 100 + height)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_crop_and_resize_floors_the_covering_side_and_centres_as_a1111():
    """31x20 into 16x16: A1111 fits the height, src_w = 31 * 16 // 20 = 24 (not 25), pasted at 8 - 12 = -4."""
    picture = _picture(31, 20)
    ours = image_ops.resize_image(picture, 16, 16, ResizeMode.CROP_AND_RESIZE)
    expected = picture.resize((24, 16), Image.LANCZOS).crop((4, 0, 20, 16))
    assert np.array_equal(_pixels(ours), _pixels(expected))


def test_crop_and_resize_of_an_odd_box_takes_a1111s_offset():
    """40x20 into 15x9: src_w = 40 * 9 // 20 = 18, pasted at 15 // 2 - 18 // 2 = -2 (a centred crop would
    start at 1)."""
    picture = _picture(40, 20)
    ours = image_ops.resize_image(picture, 15, 9, ResizeMode.CROP_AND_RESIZE)
    expected = picture.resize((18, 9), Image.LANCZOS).crop((2, 0, 17, 9))
    assert np.array_equal(_pixels(ours), _pixels(expected))


def test_resize_and_fill_floors_the_fitted_side_and_stretches_the_edges():
    """33x20 into 16x16: src_h = 20 * 16 // 33 = 9 (not 10), pasted at row 8 - 4 = 4; the 4 rows above and
    below repeat one stretched edge row each."""
    picture = _picture(33, 20)
    ours = _pixels(image_ops.resize_image(picture, 16, 16, ResizeMode.RESIZE_AND_FILL))
    assert np.array_equal(ours[4:13], _pixels(picture.resize((16, 9), Image.LANCZOS)))
    assert (ours[0:4] == ours[0]).all() and (ours[13:16] == ours[15]).all()
    assert not (ours[0] == 0).all() and not (ours[15] == 0).all()  # the margins are filled, not black


def test_resize_and_fill_sideways():
    picture = _picture(20, 33)
    ours = _pixels(image_ops.resize_image(picture, 16, 16, ResizeMode.RESIZE_AND_FILL))
    assert np.array_equal(ours[:, 4:13], _pixels(picture.resize((9, 16), Image.LANCZOS)))
    assert (ours[:, 0:4] == ours[:, :1]).all() and (ours[:, 13:16] == ours[:, 15:16]).all()


# (mask box, padding, picture size, generation size) -> A1111's expanded crop region
CROP_REGIONS = [
    ((10, 20, 31, 33), 0, (64, 64), (48, 64), (10, 13, 31, 41)),
    ((10, 20, 31, 33), 4, (64, 64), (64, 48), (6, 16, 35, 37)),  # 29 / (4/3) = 21.75: truncated to 21 rows
    ((0, 0, 23, 9), 2, (64, 64), (64, 64), (0, 0, 25, 25)),
    ((50, 50, 63, 63), 8, (64, 64), (40, 72), (42, 25, 64, 64)),  # shifted back inside from the bottom
    ((5, 30, 59, 35), 3, (64, 48), (48, 64), (2, 0, 62, 48)),  # taller than the picture: cut to it
    ((20, 2, 27, 60), 1, (64, 64), (72, 40), (0, 1, 64, 61)),
]


@pytest.mark.parametrize("box, padding, size, generation, expected", CROP_REGIONS)
def test_only_masked_region_is_a1111s(box, padding, size, generation, expected):
    mask = Image.new("L", size, 0)
    mask.paste(200, box)
    assert image_ops.crop_region(mask, padding, *generation) == expected


def test_mask_blur_is_a_ramp_of_the_requested_width_rounded_after_each_direction():
    """Shape checks; the exact values (OpenCV's 8-bit Gaussian, once per direction) are compared with A1111's
    through a whole inpainting in test_inpaint_parity.py."""
    mask = Image.new("L", (60, 60), 0)
    mask.paste(255, (20, 20, 40, 40))
    blurred = np.asarray(image_ops.blur_mask(mask, 4, 4))
    row = blurred[30]
    assert row[0] == 0 and row[30] >= 250 and row[9] == 0 and row[10] > 0  # 21 taps: 10 pixels each side
    assert np.array_equal(row[:30], row[::-1][:30])
    assert (np.diff(row[:30].astype(int)) >= 0).all()
    # rounded to 8 bits between the row pass and the column pass, as A1111's two OpenCV calls: the result is
    # its own transpose only to within a level (a blur rounded once would be exactly symmetric)
    difference = np.abs(blurred.astype(int) - blurred.T.astype(int))
    assert difference.max() == 1


def test_overlay_blends_premultiplied_as_a1111():
    """Half-transparent mask pixels: the original premultiplied by the inverted mask and alpha-composited
    over the generated picture, which is what A1111's apply_overlay makes (within PIL's rounding of RGBa)."""
    original, generated = _picture(8, 8), _picture(9, 9).crop((0, 0, 8, 8))
    mask = Image.fromarray(np.linspace(0, 255, 64).astype(np.uint8).reshape(8, 8))
    ours = _pixels(image_ops.composite(original, generated, mask))
    alpha = np.asarray(mask, dtype=np.float64)[..., None] / 255
    blended = _pixels(original) * (1 - alpha) + _pixels(generated) * alpha
    assert np.abs(ours - blended).max() <= 2
    assert np.array_equal(ours[0, 0], _pixels(original)[0, 0]) and np.array_equal(ours[7, 7], _pixels(generated)[7, 7])
