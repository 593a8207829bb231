"""A1111's "NV" RNG source: the normal numbers `torch.randn(..., device="cuda")` gives for a seed, computed on
any machine. CUDA draws them with Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
2011): element i of the n-th draw of a generator uses counter (n, 0, i, 0) and key = the 64-bit seed; the first
two 32-bit outputs become one normal number by Box-Muller, in float32 as curand does."""

from __future__ import annotations

import numpy as np

MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10
INV_2_32 = np.float32(2.3283064e-10)
INV_2_32_TWO_PI = np.float32(2.3283064e-10 * 6.2831855)


def _mul_hi_lo(a: np.ndarray, multiplier: int) -> tuple[np.ndarray, np.ndarray]:
    product = a.astype(np.uint64) * np.uint64(multiplier)
    return (product >> np.uint64(32)).astype(np.uint32), (product & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def philox_4x32(counter: list[np.ndarray], key: list[np.ndarray]) -> list[np.ndarray]:
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_no in range(ROUNDS):
        if round_no:
            k0 = (k0 + np.uint32(KEY_STEPS[0])).astype(np.uint32)
            k1 = (k1 + np.uint32(KEY_STEPS[1])).astype(np.uint32)
        hi0, lo0 = _mul_hi_lo(c0, MULTIPLIERS[0])
        hi1, lo1 = _mul_hi_lo(c2, MULTIPLIERS[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def _box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """curand's float32 constants, evaluated in float64 and rounded once at the end, as A1111 computes them."""
    u = x.astype(np.float64) * np.float64(INV_2_32) + np.float64(INV_2_32) / 2
    v = y.astype(np.float64) * np.float64(INV_2_32_TWO_PI) + np.float64(INV_2_32_TWO_PI) / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxGenerator:
    """Like a CUDA torch.Generator seeded with `seed`: each `randn` call is the next draw."""

    def __init__(self, seed: int):
        self.seed = seed
        self.draws = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape))
        index = np.arange(n, dtype=np.uint32)
        zeros = np.zeros(n, dtype=np.uint32)
        counter = [np.full(n, self.draws, dtype=np.uint32), zeros, index, zeros.copy()]
        key = [np.full(n, self.seed & 0xFFFFFFFF, dtype=np.uint32), np.full(n, self.seed >> 32, dtype=np.uint32)]
        self.draws += 1
        out = philox_4x32(counter, key)
        return _box_muller(out[0], out[1]).reshape(shape)
