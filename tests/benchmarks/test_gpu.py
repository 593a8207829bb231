"""`python -m benchmarks.gpu --smoke` runs the GPU report's code paths on the CPU with tiny models in fp16, so the
command is known to work when a GPU machine is at hand."""

import json

from benchmarks import gpu


def test_smoke_run_writes_the_report(tmp_path):
    code = gpu.main(["--smoke", "--only", "rng,esrgan,sdxl_hires,churn", "--out", str(tmp_path / "report"),
                     "--workdir", str(tmp_path / "work")])
    report = json.loads((tmp_path / "report" / "gpu-report.json").read_text())
    assert code == 0, report
    sections = report["sections"]
    assert sections["churn"]["ok"] and sections["churn"]["activations"] == ["sd1.safetensors"]
    assert sections["sdxl_hires"]["not_black"] and sections["sdxl_hires"]["size"] == [96, 96]
    assert sections["esrgan"]["result"] == [128, 128] and sections["esrgan"]["dtype"] == "torch.float16"
    assert "### churn" in (tmp_path / "report" / "gpu-report.md").read_text()
