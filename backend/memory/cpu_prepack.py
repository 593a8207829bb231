"""CPU speed: convolutions with weights pre-packed into oneDNN's blocked layout.

In eager mode PyTorch reorders every convolution's weights into oneDNN's layout on every call; at the small
spatial sizes of a UNet's inner levels that reorder costs as much as the convolution. Packing once (per input
shape) makes a bf16 SD 1.5 UNet step about 25% faster on the CPU. The module's own weights are untouched, so
state dicts, offload and the model cache see the plain module. Weights changed in place (rather than replaced)
would need `unpack_convolutions` first."""

from __future__ import annotations

import types

import torch


def can_prepack() -> bool:
    return torch.backends.mkldnn.is_available()


def prepack_convolutions(module: torch.nn.Module) -> None:
    for conv in module.modules():
        if _packable(conv) and "forward" not in vars(conv):
            conv._packed = None  # (key, packed weight): one input shape at a time keeps one extra copy
            conv.forward = types.MethodType(_packed_forward, conv)


def unpack_convolutions(module: torch.nn.Module) -> None:
    for conv in module.modules():
        if "forward" in vars(conv) and getattr(conv.forward, "__func__", None) is _packed_forward:
            del conv.forward, conv._packed


def _packable(conv: torch.nn.Module) -> bool:
    return (type(conv) is torch.nn.Conv2d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and conv.weight.device.type == "cpu")


def _packed_forward(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype != conv.weight.dtype or torch.is_grad_enabled() \
            or conv.padding_mode != "zeros":  # e.g. circular while a seamless (tiling) image is made
        return torch.nn.Conv2d.forward(conv, x)
    key = (tuple(x.shape), conv.weight.dtype, conv.weight.data_ptr())  # repack if the weights were replaced
    if conv._packed is None or conv._packed[0] != key:
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            conv.weight.to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, list(x.shape))
        conv._packed = (key, packed)
    return torch.ops.mkldnn._convolution_pointwise(x, conv._packed[1], conv.bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, "none", [], "")
