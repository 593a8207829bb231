import pytest

import app
from backend.settings import MemoryFlags


def test_flags_become_settings(tmp_path):
    args = app.parse_args(["--data-dir", str(tmp_path), "--no-half", "--prediction-type", "m.safetensors=v",
                           "--max-size", "1024", "--ckpt", "m"])
    s = app.settings_from_args(args)
    assert s.checkpoint_dir == tmp_path / "models" / "Stable-diffusion"
    assert s.outputs_dir == tmp_path / "outputs"
    assert s.precision == "fp32" and s.default_checkpoint == "m"
    assert s.prediction_overrides == {"m.safetensors": "v_prediction"}
    assert s.limits.max_width == 1024


def test_memory_flags_become_settings(tmp_path):
    args = app.parse_args(["--xformers", "--medvram-sdxl", "--lowvram", "--attention-slicing", "--compile",
                           "--checkpoint-cache", "3", "--checkpoint-cache-gb", "12.5"])
    s = app.settings_from_args(args)
    assert s.memory == MemoryFlags(xformers=True, attention_slicing=True, medvram=False, medvram_sdxl=True,
                                   lowvram=True, compile=True)
    assert s.checkpoint_cache == 3 and s.checkpoint_cache_gb == 12.5
    assert app.settings_from_args(app.parse_args([])).memory == MemoryFlags()


def test_credentials_and_bad_values():
    assert app.parse_credentials("a:b, c:d:e") == [("a", "b"), ("c", "d:e")]
    with pytest.raises(SystemExit):
        app.parse_credentials("nocolon")
    with pytest.raises(SystemExit):
        app.parse_prediction_overrides(["m=sideways"])


def test_exposure_needs_credentials_unless_opted_out():
    with pytest.raises(SystemExit):
        app.check_exposure(app.parse_args(["--share"]))
    app.check_exposure(app.parse_args(["--share", "--gradio-auth", "u:p"]))
    app.check_exposure(app.parse_args(["--listen", "--insecure-no-auth", "--api"]))
    app.check_exposure(app.parse_args(["--listen", "--gradio-auth", "u:p", "--api"]))
    assert app.api_credentials(app.parse_args(["--gradio-auth", "u:p", "--api"])) == [("u", "p")]
    assert app.api_credentials(app.parse_args(["--gradio-auth", "u:p", "--api-auth", "a:b"])) == [("a", "b")]
    with pytest.raises(SystemExit, match="empty"):
        app.parse_credentials("u:")


def test_a1111_flags_are_accepted_or_refused_with_a_reason(caplog):
    import logging

    args = app.parse_args(["--opt-sdp-attention", "--skip-torch-cuda-test", "--no-download-sd-model", "--autolaunch",
                           "--enable-insecure-extension-access", "--theme", "dark", "--gradio-auth", "u:p"])
    with caplog.at_level(logging.INFO, logger="app"):
        app.announce_compat_flags(args)
    assert "--opt-sdp-attention: accepted, no effect here" in caplog.text
    flags = app.cmd_flags(args)
    assert flags["opt_sdp_attention"] is True and "gradio_auth" not in flags and "api_auth" not in flags
    with pytest.raises(SystemExit, match="restricted unpickler"):
        app.announce_compat_flags(app.parse_args(["--disable-safe-unpickle"]))
    with pytest.raises(SystemExit):
        app.parse_args(["--no-such-flag"])


def test_webui_sh_reads_commandline_args_from_webui_user_sh(tmp_path):
    import shutil
    import subprocess

    from tests.server import ROOT

    # a copy of the launcher beside a fake venv whose python prints its arguments
    shutil.copy(ROOT / "webui.sh", tmp_path / "webui.sh")
    (tmp_path / "requirements.txt").write_text("")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    (bin_dir / "python").write_text("#!/usr/bin/env bash\necho \"$@\"\n")
    (bin_dir / "python").chmod(0o755)
    (tmp_path / ".venv" / ".requirements-installed").touch()
    (tmp_path / "webui-user.sh").write_text('COMMANDLINE_ARGS="--api --port 7999"\n')
    out = subprocess.run(["bash", str(tmp_path / "webui.sh"), "--listen"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "app.py --api --port 7999 --listen"


def test_the_log_is_clean_at_start(models_dir, tmp_path):
    import requests

    from tests.server import running_app

    with running_app(models_dir, tmp_path / "outputs", "--api", ready_path="/sdapi/v1/progress") as base:
        assert requests.get(base + "/", timeout=30).status_code == 200
    log = next(tmp_path.glob("app-*.log")).read_text()
    for noise in ("xFormers can't load", "[transformers]", "torchvision", "too many output values", "Traceback"):
        assert noise not in log, noise
