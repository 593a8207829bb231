"""Super-resolution networks our users' upscaler files contain, written from their published architectures:
ESRGAN's RRDBNet (Wang et al. 2018; Real-ESRGAN's x2/x1 variants feed it pixel-unshuffled input) and
Real-ESRGAN's SRVGGNetCompact (Wang et al. 2021). Each is built from a state dict by reading its tensors
(features, blocks, growth channels, scale), in both the original ESRGAN and the newer key layouts."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from backend.errors import CheckpointError


class _DenseBlock(nn.Module):
    """Five convolutions, each seeing the block input and all earlier outputs; scaled residual."""

    def __init__(self, features: int, growth: int):
        super().__init__()
        for i in range(1, 6):
            out = features if i == 5 else growth
            setattr(self, f"conv{i}", nn.Conv2d(features + (i - 1) * growth, out, 3, 1, 1))

    def forward(self, x):
        outputs = [x]
        for i in range(1, 5):
            outputs.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(outputs, 1)), 0.2))
        return self.conv5(torch.cat(outputs, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, features: int, growth: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (_DenseBlock(features, growth) for _ in range(3))

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    def __init__(self, in_channels: int, features: int, blocks: int, growth: int, upsamples: int, unshuffle: int):
        super().__init__()
        self.unshuffle = unshuffle
        self.conv_first = nn.Conv2d(in_channels, features, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(features, growth) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, 1, 1)
        self.ups = nn.ModuleList(nn.Conv2d(features, features, 3, 1, 1) for _ in range(upsamples))
        self.conv_hr = nn.Conv2d(features, features, 3, 1, 1)
        self.conv_last = nn.Conv2d(features, 3, 3, 1, 1)
        self.scale = 2**upsamples // unshuffle

    def forward(self, x):
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for up in self.ups:
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class SRVGGNetCompact(nn.Module):
    def __init__(self, features: int, convs: int, scale: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, features, 3, 1, 1), nn.PReLU(features)]
        for _ in range(convs):
            layers += [nn.Conv2d(features, features, 3, 1, 1), nn.PReLU(features)]
        layers.append(nn.Conv2d(features, 3 * scale * scale, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        self.scale = scale

    def forward(self, x):
        out = F.pixel_shuffle(self.body(x), self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _unwrap(sd: dict) -> dict:
    for key in ("params_ema", "params"):
        if isinstance(sd.get(key), dict):
            return sd[key]
    return sd


def _old_esrgan_to_new(sd: dict) -> dict:
    """Original ESRGAN names (model.0, model.1.sub.N.RDBk.convj.0, model.3/6/8/10) -> the newer layout."""
    new, trunk = {}, []
    for key, value in sd.items():
        if match := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key):
            block, rdb, conv, kind = match.groups()
            new[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif match := re.fullmatch(r"model\.1\.sub\.(\d+)\.(weight|bias)", key):
            new[f"conv_body.{match.group(2)}"] = value
        elif match := re.fullmatch(r"model\.(\d+)\.(weight|bias)", key):
            trunk.append((int(match.group(1)), match.group(2), value))
    indices = sorted({i for i, _, _ in trunk})
    names = {indices[0]: "conv_first", indices[-1]: "conv_last", indices[-2]: "conv_hr"}
    for n, index in enumerate(indices[1:-2]):
        names[index] = f"ups.{n}"
    for index, kind, value in trunk:
        new[f"{names[index]}.{kind}"] = value
    return new


def build_network(state_dict: dict) -> nn.Module:
    """A ready network from an upscaler file's tensors; CheckpointError for an architecture not supported."""
    sd = _unwrap(state_dict)
    if "model.0.weight" in sd:
        sd = _old_esrgan_to_new(sd)
    if "conv_first.weight" in sd:
        sd = {k.replace("conv_up1", "ups.0").replace("conv_up2", "ups.1"): v for k, v in sd.items()}
        first = sd["conv_first.weight"]
        blocks = len({k.split(".")[1] for k in sd if k.startswith("body.")})
        upsamples = len({k.split(".")[1] for k in sd if k.startswith("ups.")})
        unshuffle = int(math.isqrt(first.shape[1] // 3))
        net = RRDBNet(first.shape[1], first.shape[0], blocks, sd["body.0.rdb1.conv1.weight"].shape[0], upsamples,
                      unshuffle)
    elif "body.0.weight" in sd and sd["body.0.weight"].dim() == 4 and sd["body.1.weight"].dim() == 1:
        convs = sorted(int(k.split(".")[1]) for k in sd if k.startswith("body.") and sd[k].dim() == 4)
        last = sd[f"body.{convs[-1]}.weight"]
        net = SRVGGNetCompact(sd["body.0.weight"].shape[0], len(convs) - 2, int(math.isqrt(last.shape[0] // 3)))
    else:
        raise CheckpointError("not an ESRGAN/Real-ESRGAN network (SwinIR, DAT, HAT and ScuNET are not supported)")
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"the network's tensors do not fit its detected architecture: {err}") from err
    return net.eval()
