"""Control maps to the generation size, as the extension's `detectmap_proc` does: RGBA composited on white
(`HWC3`), then "Just Resize", "Crop and Resize" or "Resize and Fill" with its high-quality resize (nearest for
few colours, area down, cubic up; binary one-pixel edges re-thinned)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")


def hwc3(x: np.ndarray) -> np.ndarray:
    """uint8 grey, RGB or RGBA -> RGB; alpha is composited on white."""
    if x.ndim == 2:
        x = x[:, :, None]
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    color = x[:, :, 0:3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def pixel_perfect_resolution(image: np.ndarray, height: int, width: int, resize_mode: str) -> int:
    """The preprocessor resolution that makes the map's short side land on the target's exactly."""
    raw_h, raw_w = image.shape[:2]
    k0, k1 = height / raw_h, width / raw_w
    k = min(k0, k1) if resize_mode == "Resize and Fill" else max(k0, k1)
    return int(np.round(k * min(raw_h, raw_w)))


def fit(detected: np.ndarray, resize_mode: str, height: int, width: int, inpaint: bool = False) -> np.ndarray:
    """The detected map (H, W, 3) at (height, width) by the unit's resize mode. An inpaint map stays RGBA in
    float32 (its mask resized along and made 0/255), as the extension keeps it."""
    detected = detected.astype(np.float32) if inpaint else hwc3(detected)
    if resize_mode == "Just Resize":
        return _quality_resize(detected, width, height)
    old_h, old_w = detected.shape[:2]
    k0, k1 = height / old_h, width / old_w
    if resize_mode == "Resize and Fill":
        k = min(k0, k1)
        borders = np.concatenate([detected[0], detected[-1], detected[:, 0], detected[:, -1]], axis=0)
        colour = np.median(borders, axis=0).astype(detected.dtype)
        if colour.shape[0] == 4:
            colour[3] = 255  # the padding is to be painted
        canvas = np.tile(colour[None, None], [height, width, 1])
        inner = _quality_resize(detected, _round(old_w * k), _round(old_h * k))
        new_h, new_w = inner.shape[:2]
        pad_h, pad_w = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        canvas[pad_h : pad_h + new_h, pad_w : pad_w + new_w] = inner
        return canvas
    k = max(k0, k1)
    outer = _quality_resize(detected, _round(old_w * k), _round(old_h * k))
    new_h, new_w = outer.shape[:2]
    pad_h, pad_w = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(outer[pad_h : pad_h + height, pad_w : pad_w + width])


def to_hint(detected: np.ndarray) -> torch.Tensor:
    """(H, W, C) in 0..255 -> (1, C, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(detected)).float().div(255.0).permute(2, 0, 1)[None].contiguous()


def model_input(hint: torch.Tensor) -> torch.Tensor:
    """What the ControlNet sees: RGB, or for an RGBA inpaint map the extension's protocol (masked pixels -1)."""
    if hint.shape[1] != 4:
        return hint
    masked = (hint[:, 3:4] > 0.5).float()
    return hint[:, :3] * (1 - masked) - masked


def _round(x: float) -> int:
    return int(np.round(x))


def _quality_resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    if x.shape[0] == height and x.shape[1] == width:
        return x
    if x.shape[2] == 4:  # an inpaint map: the mask is resized alike, then made 0/255
        rgb, interpolation = _quality_resize_rgb(x[:, :, :3], width, height)
        mask = cv2.resize(x[:, :, 3], (width, height), interpolation=interpolation)
        mask = ((mask > 127).astype(np.float32) * 255.0)[:, :, None].clip(0, 255).astype(x.dtype)
        return np.concatenate([rgb, mask.astype(rgb.dtype)], axis=2)
    return _quality_resize_rgb(x, width, height)[0]


def _quality_resize_rgb(x: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int]:
    smaller = width * height < x.shape[0] * x.shape[1]
    bigger = width * height > x.shape[0] * x.shape[1]
    colours = len(np.unique(x.reshape(-1, x.shape[2]), axis=0))
    binary = one_pixel_edge = False
    if colours == 2:
        binary = x.min() < 16 and x.max() > 240
        if binary:
            opened = cv2.dilate(cv2.erode(x, np.ones((3, 3), np.uint8), iterations=1), np.ones((3, 3), np.uint8),
                                iterations=1)
            one_pixel_edge = np.where(opened < x)[0].shape[0] * 2 > np.where(x > 127)[0].shape[0]
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif smaller:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    y = cv2.resize(x, (width, height), interpolation=interpolation)
    if binary:
        y = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        if one_pixel_edge:
            y = _edge_nms(y)
            _, y = cv2.threshold(y, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            y = _thin(y, prune=bigger)
        else:
            _, y = cv2.threshold(y, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        y = np.stack([y] * 3, axis=2)
    return y, interpolation


# Hit-or-miss patterns of the extension's edge thinning (lvmin_thin): two base kernels in four rotations.
_THIN = [np.rot90(k, r) for r in range(4) for k in (
    np.array([[-1, -1, -1], [0, 1, 0], [1, 1, 1]], np.int32), np.array([[0, -1, -1], [1, 1, -1], [0, 1, 0]], np.int32))]
_PRUNE = [np.rot90(k, r) for r in range(4) for k in (
    np.array([[-1, -1, -1], [-1, 1, -1], [0, 0, -1]], np.int32),
    np.array([[-1, -1, -1], [-1, 1, -1], [-1, 0, 0]], np.int32))]


def _thin_pass(x: np.ndarray, kernels) -> bool:
    """Remove every pixel a kernel hits (in place); True when nothing changed."""
    unchanged = True
    for kernel in kernels:
        hits = np.where(cv2.morphologyEx(x, cv2.MORPH_HITMISS, kernel) > 127)
        x[hits] = 0
        unchanged = unchanged and hits[0].shape[0] == 0
    return unchanged


def _thin(x: np.ndarray, prune: bool) -> np.ndarray:
    for _ in range(32):
        if _thin_pass(x, _THIN):
            break
    if prune:
        _thin_pass(x, _PRUNE)
    return x


def _edge_nms(x: np.ndarray) -> np.ndarray:
    """Keep a pixel where it is the maximum along any of four directions."""
    out = np.zeros_like(x)
    for kernel in ([[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
                   [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]):
        np.putmask(out, cv2.dilate(x, kernel=np.array(kernel, np.uint8)) == x, x)
    return out
