"""Seamless (tileable) images, as A1111's `tiling`: every convolution of the UNet and the VAE pads circularly
while the request runs, and is put back afterwards."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def seamless(modules: list[torch.nn.Module], on: bool):
    if not on:
        yield
        return
    convs = [m for module in modules for m in module.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                   torch.nn.ConvTranspose2d))]
    before = [conv.padding_mode for conv in convs]
    try:
        for conv in convs:
            if isinstance(conv, torch.nn.Conv2d):  # ConvTranspose2d supports only zero padding
                conv.padding_mode = "circular"
        yield
    finally:
        for conv, mode in zip(convs, before, strict=True):
            conv.padding_mode = mode
