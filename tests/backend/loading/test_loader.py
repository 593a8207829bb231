import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.loading.loader import load_model, module_bytes, open_model
from tests.fixtures import tiny_models

ROOT = Path(__file__).resolve().parents[3]


def test_each_component_is_built_in_its_target_dtype(models_dir, tiny):
    model = load_model(models_dir / "Stable-diffusion" / "sd1.safetensors", torch.bfloat16, vae_dtype=torch.float32)
    assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.text_encoders[0].parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.parameters()} == {torch.float32}
    expected = tiny["sd1"].unet.conv_in.weight.to(torch.bfloat16)
    assert torch.equal(model.unet.conv_in.weight, expected)


def test_size_is_known_before_the_model_is_built(models_dir):
    for name in ("sdxl.safetensors", "sd1-pickle.ckpt", "diffusers-sd1"):
        source = open_model(models_dir / "Stable-diffusion" / name)
        size = source.size(torch.float16, torch.float32)
        model = source.load(torch.float16, torch.float32, torch.device("cpu"))
        parts = [module_bytes(m) for m in model.modules()]
        # Estimated from the file's index: buffers the file lacks (position ids) may differ by a few bytes.
        assert size.total_bytes == pytest.approx(sum(parts), rel=0.001), name
        assert size.largest_component_bytes == pytest.approx(max(parts), rel=0.001), name


# Loads a checkpoint in a fresh process and prints how far resident memory rose above where it started.
_MEASURE_LOAD = """
import json, sys, torch
from pathlib import Path
from backend.loading.loader import load_model, module_bytes

def kib(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
start = kib("VmRSS")
model = load_model(Path(sys.argv[1]), torch.float32)
print(json.dumps({"rise": (kib("VmHWM") - start) * 1024, "model": sum(module_bytes(m) for m in model.modules())}))
"""


def test_loading_never_holds_the_whole_file_beside_the_model(tmp_path):
    # An fp16 file loaded as fp32: reading the file whole and then converting peaks at file + model;
    # reading one tensor at a time peaks at about the model alone.
    path = tiny_models.write_checkpoint(tiny_models.make_sd1(seed=7, width=384), tmp_path / "wide.safetensors",
                                        dtype=torch.float16)
    file_bytes = path.stat().st_size
    out = subprocess.run([sys.executable, "-c", _MEASURE_LOAD, str(path)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    assert measured["model"] > 1.9 * file_bytes  # the model really is fp32
    limit = measured["model"] + file_bytes // 2
    assert measured["rise"] < limit, f"peak rise {measured['rise'] >> 20} MB, limit {limit >> 20} MB"
