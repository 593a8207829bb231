"""Token merging (ToMe for SD) as A1111 applies it: `tomesd`'s algorithm with A1111's settings (merge in
self-attention only, no randomness, 2x2 regions, full-resolution blocks only). tomesd's own patch targets an
older diffusers block, so the merge is attached here with hooks: the block's input decides which tokens merge
(bipartite soft matching), the self-attention runs on the merged tokens, its output is unmerged."""

from __future__ import annotations

import contextlib
import math

import torch
from tomesd.merge import bipartite_soft_matching_random2d

STRIDE = 2  # tomesd's sx, sy: one destination token per 2x2 region
MAX_DOWNSAMPLE = 1  # only the blocks at the latent's full resolution merge


@contextlib.contextmanager
def token_merging(unet: torch.nn.Module, ratio: float):
    """While sampling: every self-attention at full resolution merges `ratio` of its tokens (0: off)."""
    if not ratio:
        yield
        return
    size: dict[str, tuple[int, int]] = {}
    handles = [unet.register_forward_pre_hook(lambda module, args: size.update(latent=tuple(args[0].shape[-2:])))]
    for block in _transformer_blocks(unet):
        handles += _attach(block, ratio, size)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _transformer_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock" and hasattr(m, "attn1")]


def _attach(block: torch.nn.Module, ratio: float, size: dict) -> list:
    state: dict = {}

    def choose(module, args, kwargs):  # the block's input decides which tokens merge
        hidden = args[0] if args else kwargs["hidden_states"]
        state["merge"], state["unmerge"] = _merge_functions(hidden, size["latent"], ratio)

    def merge_input(module, args, kwargs):
        return (state["merge"](args[0]), *args[1:]), kwargs

    def unmerge_output(module, args, output):
        return state["unmerge"](output)

    return [block.register_forward_pre_hook(choose, with_kwargs=True),
            block.attn1.register_forward_pre_hook(merge_input, with_kwargs=True),
            block.attn1.register_forward_hook(unmerge_output)]


def _merge_functions(hidden: torch.Tensor, latent: tuple[int, int], ratio: float):
    height, width = latent
    downsample = int(math.ceil(math.sqrt((height * width) // hidden.shape[1])))
    if downsample > MAX_DOWNSAMPLE:
        return _same, _same
    w, h = int(math.ceil(width / downsample)), int(math.ceil(height / downsample))
    return bipartite_soft_matching_random2d(hidden, w, h, STRIDE, STRIDE, int(hidden.shape[1] * ratio), no_rand=True)


def _same(x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
    return x
