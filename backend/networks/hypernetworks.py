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

from diffusers.models.attention_processor import Attention
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


class _ContextTransform:
    """A forward pre-hook for an attention layer's to_k or to_v: its input (the context) goes through each
    hypernetwork's MLP for that width first. As a hook it works under every attention processor (SDPA, sliced,
    xformers) and leaves the projection itself alone (LoRA merges it in place)."""

    def __init__(self, hypernetworks: list[Hypernetwork], which: int):
        self.hypernetworks, self.which = hypernetworks, which  # 0: keys, 1: values

    def __call__(self, module, args):
        context = args[0]
        for hypernetwork in self.hypernetworks:
            pair = hypernetwork.layers.get(context.shape[-1])
            if pair is not None:
                net = pair[self.which].to(context.device)
                context = net(context.float()).to(args[0].dtype)
        return (context, *args[1:])


class HypernetPatcher:
    """The hypernetworks in use on one model's UNet, as hooks on every attention layer's key and value
    projections; removed when no longer wanted."""

    def __init__(self):
        self._handles: list = []
        self.signature: tuple = ()

    def changes(self, wanted: list[tuple[Hypernetwork, float]]) -> bool:
        return tuple((h.path, m) for h, m in wanted) != self.signature

    def apply(self, unet, wanted: list[tuple[Hypernetwork, float]]) -> None:
        signature = tuple((h.path, m) for h, m in wanted)
        if signature == self.signature:
            return
        self.restore(unet)
        if wanted:
            for hypernetwork, multiplier in wanted:
                hypernetwork.set_multiplier(multiplier)
            networks = [h for h, _ in wanted]
            for module in unet.modules():
                if isinstance(module, Attention):
                    self._handles.append(module.to_k.register_forward_pre_hook(_ContextTransform(networks, 0)))
                    self._handles.append(module.to_v.register_forward_pre_hook(_ContextTransform(networks, 1)))
        self.signature = signature

    def restore(self, unet) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.signature = ()
