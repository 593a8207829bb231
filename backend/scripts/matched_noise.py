"""Outpainting mk2's fill for the new border (the g-diffuser method A1111 uses): noise whose spectrum is shaped
like the kept picture's, and whose values per channel are then given the kept picture's histogram. Its random
numbers come from a fixed seed (0), as in A1111, so only the generation seed varies the result."""

from __future__ import annotations

import numpy as np


def _centred_fft(data: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Orthonormal 2-D (inverse) FFT of each channel, shifted before and after as A1111's helpers do."""
    transform = np.fft.ifft2 if inverse else np.fft.fft2
    out = np.zeros(data.shape, dtype=np.complex128)
    for c in range(data.shape[2]):
        out[:, :, c] = np.fft.ifftshift(transform(np.fft.fftshift(data[:, :, c]), norm="ortho"))
    return out


def _falloff_window(width: int, height: int, std: float = 3.14) -> np.ndarray:
    """A smooth low-pass window over the (width, height) spectrum: 1 / ((x^2 + 1)(y^2 + 1)) ^ (std / 3.14)."""
    scale = min(width, height)
    x = (np.arange(width) / width * 2.0 - 1.0) * (width / scale)
    y = (np.arange(height) / height * 2.0 - 1.0) * (height / scale)
    return (1 / ((x[:, None] ** 2 + 1.0) * (y[None, :] ** 2 + 1.0))) ** (std / 3.14)


def match_histogram(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each column (channel) of `source` (N, C) remapped so its value distribution is `reference`'s: every
    distinct value goes to the reference value at the same cumulative quantile (linear in between)."""
    matched = np.empty_like(source, dtype=np.float64)
    for c in range(source.shape[1]):
        values, inverse, counts = np.unique(source[:, c], return_inverse=True, return_counts=True)
        ref_values, ref_counts = np.unique(reference[:, c], return_counts=True)
        quantiles = np.cumsum(counts) / source.shape[0]
        ref_quantiles = np.cumsum(ref_counts) / reference.shape[0]
        matched[:, c] = np.interp(quantiles, ref_quantiles, ref_values)[inverse.reshape(-1)]
    return matched


def matched_noise(image: np.ndarray, mask: np.ndarray, noise_q: float = 1.0,
                  color_variation: float = 0.05) -> np.ndarray:
    """`image` (H, W, 3) in 0..1 with the `mask` (H, W, 3; 1 = fill) area replaced by shaped noise."""
    width, height, channels = image.shape  # A1111 names the first axis "width"; kept for the window's shape
    grey_mask = mask.sum(axis=2) / 3.0
    to_fill, reference = grey_mask > 1e-6, grey_mask < 1e-3

    windowed = image * (1.0 - mask)
    windowed = windowed / np.max(windowed)
    windowed = windowed + np.average(image) * mask  # the average colour in the hole helps the FFT
    source_fft = _centred_fft(windowed)
    magnitude = np.absolute(source_fft)
    phase = np.divide(source_fft, magnitude, out=np.ones_like(source_fft), where=magnitude > 0)  # A1111: NaN

    rng = np.random.default_rng(0)
    noise = rng.random((width, height, channels))
    grey = noise.sum(axis=2) / 3.0
    noise = noise * color_variation + ((1.0 - color_variation) * grey)[:, :, None]
    noise_fft = _centred_fft(noise) * _falloff_window(width, height)[:, :, None]
    noise = np.real(_centred_fft(noise_fft, inverse=True))
    shaped_fft = np.absolute(_centred_fft(noise)) ** 2 * (magnitude ** noise_q) * phase

    shaped = np.real(_centred_fft(shaped_fft, inverse=True))
    shaped -= np.min(shaped)
    shaped /= np.max(shaped)
    shaped[to_fill, :] = match_histogram(shaped[to_fill, :], image[reference, :])
    return np.clip(image * (1.0 - mask) + shaped * mask, 0.0, 1.0)
