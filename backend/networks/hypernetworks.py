"""A1111's hypernetworks (`models/hypernetworks/*.pt`, `<hypernet:name:multiplier>`): for each context width a
pair of small MLPs that transform what an attention layer's keys and values are computed from (x + mlp(x) *
multiplier), in every attention layer of the UNet (self-attention too, whose context is its own input).

Files are read through the restricted unpickler. The MLPs are rebuilt layer for layer as A1111 builds them
(layer structure, activation, layer norm, dropout), so the file's state dicts load unchanged."""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import nn

from backend.errors import CheckpointError
from backend.hashing import sha256_file
from backend.loading.checkpoint_file import read_pickle

log = logging.getLogger(__name__)

ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
               "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
ACTIVATIONS.update({name.lower(): cls for name, cls in inspect.getmembers(nn.modules.activation, inspect.isclass)
                    if cls.__module__ == "torch.nn.modules.activation" and name.lower() not in ACTIVATIONS})


class HypernetModule(nn.Module):
    def __init__(self, dim: int, state: dict, structure: list, activation: str | None, layer_norm: bool,
                 activate_output: bool, dropout: list):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(len(structure) - 1):
            layers.append(nn.Linear(int(dim * structure[i]), int(dim * structure[i + 1])))
            last = i >= len(structure) - 2
            if activation not in (None, "linear") and not (last and not activate_output):
                if activation not in ACTIVATIONS:
                    raise CheckpointError(f"unsupported hypernetwork activation '{activation}'")
                layers.append(ACTIVATIONS[activation]())
            if layer_norm:
                layers.append(nn.LayerNorm(int(dim * structure[i + 1])))
            if dropout[i + 1] > 0:
                layers.append(nn.Dropout(p=dropout[i + 1]))
        self.linear = nn.Sequential(*layers)
        renamed = {{"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
                    "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}.get(k, k): v
                   for k, v in state.items()}
        self.load_state_dict(renamed)
        self.multiplier = 1.0
        self.eval()

    def forward(self, x):
        return x + self.linear(x) * self.multiplier


def _dropout_structure(data: dict, structure: list) -> list:
    given = data.get("dropout_structure")
    if given is not None:
        return list(given)
    use = bool(data.get("use_dropout", False))
    if not use:
        return [0] * len(structure)
    return [0] + [0.3] * (len(structure) - 3) + [0.3 if data.get("last_layer_dropout", False) else 0] + [0]


@dataclass
class Hypernetwork:
    name: str
    path: Path
    layers: dict[int, tuple[HypernetModule, HypernetModule]]

    @property
    def short_hash(self) -> str:
        return sha256_file(self.path)[:10]

    def set_multiplier(self, value: float) -> None:
        for pair in self.layers.values():
            for module in pair:
                module.multiplier = value


def load_hypernetwork(path: Path) -> Hypernetwork:
    data = read_pickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path.name} is not a hypernetwork")
    structure = list(data.get("layer_structure") or [1, 2, 1])
    dropout = _dropout_structure(data, structure)
    layers = {}
    try:
        for size, pair in data.items():
            if isinstance(size, int):
                layers[size] = tuple(HypernetModule(size, dict(sd), structure, data.get("activation_func"),
                                                    bool(data.get("is_layer_norm", False)),
                                                    bool(data.get("activate_output", True)), dropout)
                                     for sd in pair[:2])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path.name}: its layers do not match its layer structure ({err})") from err
    if not layers:
        raise CheckpointError(f"{path.name} holds no hypernetwork layers")
    return Hypernetwork(str(data.get("name") or path.stem), path, layers)


class HypernetLibrary:
    def __init__(self, folders: list[Path]):
        self.folders = folders
        self._lock = threading.Lock()
        self._files: dict[str, Path] = {}
        self._loaded: dict[Path, Hypernetwork] = {}
        self.refresh()

    def refresh(self) -> None:
        found = {}
        for folder in self.folders:
            if folder.is_dir():
                for path in sorted(folder.rglob("*.pt")):
                    if path.is_file():
                        found.setdefault(path.stem, path)
        with self._lock:
            self._files = found

    def names(self) -> dict[str, Path]:
        with self._lock:
            return dict(self._files)

    def load(self, name: str) -> Hypernetwork | None:
        path = self.names().get(name)
        if path is None:
            return None
        with self._lock:
            if path not in self._loaded:
                self._loaded[path] = load_hypernetwork(path)
            return self._loaded[path]


class HypernetAttention:
    """An attention processor: keys and values are computed from the context passed through the hypernetworks
    (for the context's width), queries from the input as usual; scaled dot-product attention."""

    def __init__(self, hypernetworks: list[Hypernetwork]):
        self.hypernetworks = hypernetworks

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        context_k = context_v = context
        for hypernetwork in self.hypernetworks:
            pair = hypernetwork.layers.get(context_k.shape[-1])
            if pair is not None:
                k_net, v_net = pair
                k_net.to(context.device), v_net.to(context.device)
                context_k = k_net(context_k.float()).to(context.dtype)
                context_v = v_net(context_v.float()).to(context.dtype)
        batch = hidden_states.shape[0]
        heads = attn.heads
        q = attn.to_q(hidden_states)
        k, v = attn.to_k(context_k), attn.to_v(context_v)

        def split(t):
            return t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, heads * (q.shape[-1] // heads)).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class HypernetPatcher:
    """The hypernetworks in use on one model's UNet; the attention processors they replaced come back after."""

    def __init__(self):
        self._original: dict | None = None
        self.signature: tuple = ()

    def apply(self, unet, wanted: list[tuple[Hypernetwork, float]]) -> None:
        signature = tuple((h.path, m) for h, m in wanted)
        if signature == self.signature:
            return
        self.restore(unet)
        if wanted:
            for hypernetwork, multiplier in wanted:
                hypernetwork.set_multiplier(multiplier)
            self._original = dict(unet.attn_processors)
            processor = HypernetAttention([h for h, _ in wanted])
            unet.set_attn_processor({name: processor for name in self._original})
        self.signature = signature

    def restore(self, unet) -> None:
        if self._original is not None:
            unet.set_attn_processor(self._original)
            self._original = None
        self.signature = ()
