"""LoRA-family network files -> one weight delta per layer, with the formulas of A1111 1.10's built-in Lora
extension: LoRA/LoCon (`up @ down`, optional CP `mid`), LoHa (`(w1a @ w1b) * (w2a @ w2b)`, optional Tucker
`t1`/`t2`), LoKr (`kron(w1, w2)`, each factor whole or as `a @ b`), full (`diff`, `diff_b` on the bias), norm
(`w_norm`, `b_norm`) and DoRA (`dora_scale`: the merged weight's column norms rescaled).

A delta is scaled by `scale` if the file has one, else by alpha / rank when both are known (for LoKr only when a
factor is decomposed), then by the user's multiplier."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# peft / diffusers spellings of kohya's part names
_PART_ALIASES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
                 "lora.down.weight": "lora_down.weight", "lora.up.weight": "lora_up.weight"}
_PEFT_PARTS = ("lora_A.weight", "lora_B.weight", "lora.down.weight", "lora.up.weight", "alpha", "dora_scale")


class UnsupportedLayer(ValueError):
    """A layer in a format this project does not apply (IA3, GLoRA, OFT...)."""


@dataclass
class LayerWeights:
    key: str  # the layer's name in the file, without the part (matched against backend/networks/keys.py)
    parts: dict[str, torch.Tensor]

    @property
    def kind(self) -> str:
        for part, kind in (("lora_up.weight", "lora"), ("hada_w1_a", "loha"), ("lokr_w1", "lokr"),
                           ("lokr_w1_a", "lokr"), ("diff", "full"), ("w_norm", "norm")):
            if part in self.parts:
                return kind
        raise UnsupportedLayer(f"layer {self.key}: unsupported parts {sorted(self.parts)}")


def split_layers(tensors: dict[str, torch.Tensor]) -> list[LayerWeights]:
    """Group a file's tensors by layer: `<layer>.<part>`, where peft/diffusers names end in `.lora_A.weight` etc.
    and kohya names have the layer before the first dot."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        peft = next((p for p in _PEFT_PARTS if name.endswith("." + p) and not name.startswith("lora_")), None)
        if peft is not None:
            key, part = name[: -len(peft) - 1], peft
        else:
            key, _, part = name.partition(".")
        layers.setdefault(key, {})[_PART_ALIASES.get(part, part)] = tensor
    return [LayerWeights(key, parts) for key, parts in layers.items()]


def _matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def _product(up: torch.Tensor, down: torch.Tensor, shape, ranks: int | None = None) -> torch.Tensor:
    up, down = _matrix(up), _matrix(down)
    if ranks is not None:
        up, down = up[:, :ranks], down[:ranks, :]
    return (up @ down).reshape(shape)


def _tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LyCORIS' CP/Tucker rebuild: core (i, j, k, l) contracted with b over j, then with a over i."""
    partial = torch.einsum("i j k l, j r -> i r k l", core, b)
    return torch.einsum("i j k l, i r -> r j k l", partial, a)


def _lora(p: dict, ranks: int | None):
    up, down, mid = p["lora_up.weight"], p["lora_down.weight"], p.get("lora_mid.weight")
    shape = [up.shape[0], down.shape[1]]
    if mid is not None:
        delta = torch.einsum("n m k l, i n, m j -> i j k l", mid, _matrix(up), _matrix(down))
        shape += list(mid.shape[2:])
    else:
        if down.dim() == 4:
            shape += list(down.shape[2:])
        delta = _product(up, down, shape, ranks)
    return delta, shape, down.shape[0], None


def _loha(p: dict, ranks: int | None):
    w1a, w1b, w2a, w2b = p["hada_w1_a"], p["hada_w1_b"], p["hada_w2_a"], p["hada_w2_b"]
    t1, t2 = p.get("hada_t1"), p.get("hada_t2")
    shape = [w1a.shape[0], w1b.shape[1]]
    if t1 is not None:
        shape = [w1a.shape[1], w1b.shape[1]] + list(t1.shape[2:])
        first = _tucker(t1, w1a, w1b)
    else:
        if w1b.dim() == 4:
            shape += list(w1b.shape[2:])
        first = _product(w1a, w1b, shape)
    second = _tucker(t2, w2a, w2b) if t2 is not None else _product(w2a, w2b, shape)
    return first * second, shape, w1b.shape[0], None


def _lokr(p: dict, orig: torch.Tensor):
    w1 = p.get("lokr_w1")
    w1 = w1 if w1 is not None else p["lokr_w1_a"] @ p["lokr_w1_b"]
    w2 = p.get("lokr_w2")
    if w2 is None:
        t2 = p.get("lokr_t2")
        w2 = _tucker(t2, p["lokr_w2_a"], p["lokr_w2_b"]) if t2 is not None else p["lokr_w2_a"] @ p["lokr_w2_b"]
    rank = p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else None
    shape = list(orig.shape) if orig.dim() == 4 else [w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2.contiguous()).reshape(shape), shape, rank, None


def layer_delta(layer: LayerWeights, orig_weight: torch.Tensor, multiplier: float,
                ranks: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight delta, bias delta or None) for one layer at `multiplier`, in float32."""
    p = {k: v.float() for k, v in layer.parts.items()}
    orig = orig_weight.float()
    kind = layer.kind
    if kind == "lora":
        delta, shape, rank, bias = _lora(p, ranks)
    elif kind == "loha":
        delta, shape, rank, bias = _loha(p, ranks)
    elif kind == "lokr":
        delta, shape, rank, bias = _lokr(p, orig)
    elif kind == "full":
        delta, shape, rank, bias = p["diff"], list(p["diff"].shape), None, p.get("diff_b")
    else:
        delta, shape, rank, bias = p["w_norm"], list(p["w_norm"].shape), None, p.get("b_norm")
    if "bias" in p:  # a bias part folds into the weight delta, as A1111 does
        delta = (delta.reshape(p["bias"].shape) + p["bias"]).reshape(shape)
    if len(shape) == 4:
        delta = delta.reshape(shape)
    if delta.numel() == orig.numel():
        delta = delta.reshape(orig.shape)
    delta = delta * _scale(p, rank)
    if "dora_scale" in p:
        delta = _dora(delta, orig, p["dora_scale"])
    return delta * multiplier, None if bias is None else bias * multiplier


def _scale(p: dict, rank: int | None) -> float:
    if "scale" in p:
        return p["scale"].item()
    if rank is not None and "alpha" in p:
        return p["alpha"].item() / rank
    return 1.0


def _dora(delta: torch.Tensor, orig: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """DoRA: the merged weight, each input column's norm replaced by `dora_scale`, minus the original."""
    merged = delta + orig
    ones = [1] * (orig.dim() - 1)
    norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1, keepdim=True)
    norm = norm.reshape(merged.shape[1], *ones).transpose(0, 1)
    return merged * (dora_scale / norm) - orig
