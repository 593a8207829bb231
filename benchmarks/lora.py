"""LoRA cost on full-size SD 1.5 shapes (random weights): merging a rank-32 LoRA into every attention and
projection layer of the UNet and text encoder, restoring the original weights, and a repeated request with the
same network (no work), against one UNet step at 512x512 (batch 2: cond + uncond) in the same run.

    .venv/bin/python -m benchmarks.lora
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from backend.loading.detect import Family
from backend.networks.keys import module_table
from backend.networks.library import NetworkLibrary
from backend.networks.patch import NetworkPatcher, WantedNetwork
from benchmarks.architectures import build


class _Model:
    """What the patcher needs of a loaded model."""

    def __init__(self, tiny):
        self.unet, self.text_encoders, self.family = tiny.unet, tiny.text_encoders, Family.SD1
        self.applied_measures = None


def _lora_file(model, folder: Path, rank: int = 32) -> Path:
    tensors = {}
    for key, (_, module) in module_table(model).items():
        if not key.startswith(("lora_unet_", "lora_te_")) or not isinstance(module, torch.nn.Linear):
            continue
        if "attn" not in key and "proj" not in key and "mlp" not in key:
            continue
        tensors[key + ".lora_down.weight"] = torch.randn(rank, module.in_features, dtype=torch.float16) * 0.01
        tensors[key + ".lora_up.weight"] = torch.randn(module.out_features, rank, dtype=torch.float16) * 0.01
        tensors[key + ".alpha"] = torch.tensor(float(rank))
    path = folder / "bench.safetensors"
    save_file(tensors, str(path))
    return path


def main() -> None:
    tiny = build("sd15")
    model = _Model(tiny)
    with tempfile.TemporaryDirectory() as tmp:
        path = _lora_file(model, Path(tmp))
        size_mb = path.stat().st_size / 1e6
        library = NetworkLibrary([Path(tmp)])
        wanted = [WantedNetwork(library.find("bench"), "bench", 0.8, 0.8)]
        library.tensors(wanted[0].network)  # read the file once, as the library keeps recent ones
        patcher = NetworkPatcher()
        layers = sum(1 for k in library.tensors(wanted[0].network) if k.endswith("lora_up.weight"))
        with torch.no_grad():
            x = torch.randn(2, 4, 64, 64)
            context = torch.randn(2, 77, 768)
            tiny.unet(x, 999, encoder_hidden_states=context)
            start = time.perf_counter()
            tiny.unet(x, 999, encoder_hidden_states=context)
            step = time.perf_counter() - start
        start = time.perf_counter()
        patcher.apply(model, wanted, library)
        apply = time.perf_counter() - start
        start = time.perf_counter()
        patcher.apply(model, wanted, library)
        repeat = time.perf_counter() - start
        start = time.perf_counter()
        patcher.restore()
        restore = time.perf_counter() - start
    image = step * 20
    print(f"SD 1.5, fp32 CPU, LoRA rank 32 on {layers} layers ({size_mb:.0f} MB file)\n")
    print("| what | s | share of a 20-step 512x512 image's UNet time |\n|---|---|---|")
    for name, seconds in (("one UNet step, 512x512, batch 2 (baseline)", step), ("merge the LoRA", apply),
                          ("the same LoRA again (no work)", repeat), ("restore the original weights", restore)):
        print(f"| {name} | {seconds:.3f} | {seconds / image:.1%} |")


if __name__ == "__main__":
    main()
