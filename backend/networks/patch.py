"""Merging LoRA-family networks into a loaded model's weights, and putting the originals back exactly.

Each touched layer's original weight (and bias) is copied to RAM before the first change; the next request
with other networks (or none) restores those copies bit for bit before merging anew, so nothing drifts however
often networks change. The same networks at the same strengths as last time cost nothing."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from backend.errors import InvalidRequest
from backend.networks.formats import UnsupportedLayer, layer_delta, split_layers
from backend.networks.keys import module_table
from backend.networks.library import NetworkFile, NetworkLibrary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WantedNetwork:
    network: NetworkFile
    typed_name: str  # as written in the prompt (the infotext's `Lora hashes` uses it)
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None

    @property
    def identity(self) -> tuple:
        stat = self.network.path.stat()
        return (str(self.network.path), stat.st_size, stat.st_mtime_ns, self.te, self.unet, self.dyn)


class NetworkPatcher:
    """The networks merged into one loaded model (kept with the model, so its RAM cache keeps it too)."""

    def __init__(self):
        self._backups: dict[torch.nn.Module, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.signature: tuple = ()

    def changes(self, wanted: list[WantedNetwork]) -> bool:
        return tuple(w.identity for w in wanted) != self.signature

    def apply(self, model, wanted: list[WantedNetwork], library: NetworkLibrary) -> list[str]:
        """Merge `wanted` (replacing whatever was merged before); returns warnings for the user."""
        signature = tuple(w.identity for w in wanted)
        if signature == self.signature:
            return []
        self.restore()
        warnings: list[str] = []
        if wanted:
            _check_patchable(model)
            table = module_table(model)
            for want in wanted:
                warnings += self._merge(model, want, table, library)
        self.signature = signature
        return warnings

    def restore(self) -> None:
        with torch.no_grad():
            for module, (weight, bias) in self._backups.items():
                module.weight.copy_(weight)
                if bias is None:
                    module.bias = None
                else:
                    module.bias.copy_(bias)
                _forget_packed(module)
        self._backups.clear()
        self.signature = ()

    def _merge(self, model, want: WantedNetwork, table: dict, library: NetworkLibrary) -> list[str]:
        layers = split_layers(library.tensors(want.network))
        matched = [layer for layer in layers if layer.key in table]
        made_for = _made_for(layers)
        model_kind = "SDXL" if len(model.text_encoders) == 2 else "SD 1.x/2.x"
        if not matched or (made_for is not None and made_for != model_kind):
            raise InvalidRequest("prompt", f"LoRA '{want.typed_name}' does not fit this {model.family.value} model"
                                           f"{f' (it is for {made_for})' if made_for else ''}: none of its layers "
                                           "can be applied")
        matched, partial = _whole_openclip_attention(matched, model)
        warnings = []
        if partial:
            warnings.append(f"LoRA '{want.typed_name}': {partial} OpenCLIP attention layers lack some of q, k, v and "
                            "out_proj and were left out (as A1111 does)")
        unmatched = len(layers) - len(matched) - partial
        if unmatched:
            warnings.append(f"LoRA '{want.typed_name}': {unmatched} of its {len(layers)} layers match nothing in "
                            "this model and were left out")
        unsupported = misfits = 0
        with torch.no_grad():
            for layer in matched:
                part, module = table[layer.key]
                try:
                    self._merge_layer(module, layer, want.te if part == "te" else want.unet, want.dyn)
                except UnsupportedLayer:
                    unsupported += 1
                except (RuntimeError, KeyError, IndexError):  # shapes that do not fit the layer
                    misfits += 1
        if unsupported:
            warnings.append(f"LoRA '{want.typed_name}': {unsupported} layers are in a format not supported yet "
                            "(IA3, GLoRA or OFT) and were left out")
        if misfits and misfits == len(matched):
            raise InvalidRequest("prompt", f"LoRA '{want.typed_name}' does not fit this {model.family.value} model: "
                                           "none of its layers has this model's shapes")
        if misfits:
            warnings.append(f"LoRA '{want.typed_name}': {misfits} layers do not fit this model's layer shapes "
                            "and were left out")
        return warnings

    def _merge_layer(self, module: torch.nn.Module, layer, multiplier: float, dyn: int | None) -> None:
        if module not in self._backups:
            bias = module.bias.detach().to("cpu", copy=True) if module.bias is not None else None
            self._backups[module] = (module.weight.detach().to("cpu", copy=True), bias)
        weight = module.weight
        delta, bias_delta = layer_delta(layer, weight, multiplier, dyn)
        if weight.dim() == 4 and weight.shape[1] == 9 and delta.shape[1] == 4:
            delta = torch.nn.functional.pad(delta, (0, 0, 0, 0, 0, 5))  # inpainting conv_in: extra channels unchanged
        weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))
        if bias_delta is not None:
            if module.bias is None:
                module.bias = torch.nn.Parameter(bias_delta.to(weight.device, weight.dtype), requires_grad=False)
            else:
                module.bias.copy_((module.bias.float() + bias_delta.to(weight.device)).to(module.bias.dtype))
        _forget_packed(module)


_ATTENTION_PART = re.compile(r"(.*self_attn[._])(q|k|v|out)(_proj)$")


def _whole_openclip_attention(layers: list, model) -> tuple[list, int]:
    """A1111 keeps OpenCLIP's attention as one fused layer (SD 2.x's text encoder, SDXL's second) and changes
    it only when a network has all of q, k, v and out_proj for it. Ours has them separate; to give the same
    result, a layer's attention parts are used only together. Returns (layers to use, parts left out)."""
    openclip = ("lora_te_", "text_encoder.") if model.family.value == "sd2" else ("lora_te2_", "text_encoder_2.")
    groups: dict[str, list] = {}
    for layer in layers:
        match = _ATTENTION_PART.match(layer.key)
        if match and layer.key.startswith(openclip):
            groups.setdefault(match.group(1), []).append(layer)
    dropped = {id(layer) for parts in groups.values() if len(parts) < 4 for layer in parts}
    return [layer for layer in layers if id(layer) not in dropped], len(dropped)


def _made_for(layers) -> str | None:
    """What a network's text-encoder keys say it was trained on (kohya: lora_te_ for SD 1.x/2.x, lora_te1_ and
    lora_te2_ for SDXL); None when it has no text-encoder layers."""
    keys = [layer.key for layer in layers]
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "SDXL"
    if any(k.startswith("lora_te_") for k in keys):
        return "SD 1.x/2.x"
    return None


def _forget_packed(module: torch.nn.Module) -> None:
    """Convolution weights pre-packed for the CPU (backend/memory/cpu_prepack.py) must be packed again."""
    if getattr(module, "_packed", None) is not None:
        module._packed = None


def _check_patchable(model) -> None:
    """The caller (backend/networks/apply.py) takes a compiled or sequentially offloaded model's weights back
    first; merging into the offload map's placeholders would change nothing."""
    if any(param.device.type == "meta" for module in model.modules() for param in module.parameters()):
        raise RuntimeError("networks merged into a sequentially offloaded model")
