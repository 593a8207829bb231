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


# Every flag of A1111 1.10's modules/cmd_args.py, with a value where it takes one (data from A1111's parser).
A1111_FLAGS = [
    ["-f"], ["--update-all-extensions"], ["--skip-python-version-check"], ["--skip-torch-cuda-test"],
    ["--reinstall-xformers"], ["--reinstall-torch"], ["--update-check"], ["--test-server"], ["--log-startup"],
    ["--skip-prepare-environment"], ["--skip-install"], ["--dump-sysinfo"], ["--loglevel", "DEBUG"],
    ["--do-not-download-clip"], ["--data-dir", "."], ["--models-dir", "models"], ["--config", "v1.yaml"],
    ["--ckpt", "model.safetensors"], ["--ckpt-dir", "ckpts"], ["--vae-dir", "vaes"], ["--gfpgan-dir", "g"],
    ["--gfpgan-model", "g.pth"], ["--no-half"], ["--no-half-vae"], ["--no-progressbar-hiding"],
    ["--max-batch-count", "16"], ["--embeddings-dir", "emb"], ["--textual-inversion-templates-dir", "t"],
    ["--hypernetwork-dir", "h"], ["--localizations-dir", "l"], ["--allow-code"], ["--medvram"],
    ["--medvram-sdxl"], ["--lowvram"], ["--lowram"], ["--always-batch-cond-uncond"], ["--unload-gfpgan"],
    ["--precision", "full"], ["--upcast-sampling"], ["--share"], ["--ngrok", "token"], ["--ngrok-region", "us"],
    ["--ngrok-options", "{}"], ["--enable-insecure-extension-access"], ["--codeformer-models-path", "c"],
    ["--gfpgan-models-path", "g"], ["--esrgan-models-path", "e"], ["--bsrgan-models-path", "b"],
    ["--realesrgan-models-path", "r"], ["--dat-models-path", "d"], ["--clip-models-path", "c"], ["--xformers"],
    ["--force-enable-xformers"], ["--xformers-flash-attention"], ["--deepdanbooru"], ["--opt-split-attention"],
    ["--opt-sub-quad-attention"], ["--sub-quad-q-chunk-size", "1024"], ["--sub-quad-kv-chunk-size", "512"],
    ["--sub-quad-chunk-threshold", "80"], ["--opt-split-attention-invokeai"], ["--opt-split-attention-v1"],
    ["--opt-sdp-attention"], ["--opt-sdp-no-mem-attention"], ["--disable-opt-split-attention"],
    ["--disable-nan-check"], ["--use-cpu", "all"], ["--use-ipex"], ["--disable-model-loading-ram-optimization"],
    ["--listen"], ["--port", "7861"], ["--show-negative-prompt"], ["--ui-config-file", "ui-config.json"],
    ["--hide-ui-dir-config"], ["--freeze-settings"], ["--freeze-settings-in-sections", "saving-images"],
    ["--freeze-specific-settings", "samples_save"], ["--ui-settings-file", "config.json"], ["--gradio-debug"],
    ["--gradio-auth", "u:p"], ["--gradio-auth-path", "auth.txt"], ["--gradio-img2img-tool", "x"],
    ["--gradio-inpaint-tool", "x"], ["--gradio-allowed-path", "shared"], ["--opt-channelslast"],
    ["--styles-file", "styles.csv"], ["--autolaunch"], ["--theme", "dark"], ["--use-textbox-seed"],
    ["--disable-console-progressbars"], ["--enable-console-prompts"], ["--vae-path", "v.safetensors"],
    ["--api"], ["--api-auth", "a:b"], ["--api-log"], ["--nowebui"], ["--ui-debug-mode"], ["--device-id", "1"],
    ["--administrator"], ["--cors-allow-origins", "http://a.example"], ["--cors-allow-origins-regex", ".*"],
    ["--tls-keyfile", "k.pem"], ["--tls-certfile", "c.pem"], ["--disable-tls-verify"], ["--server-name", "host"],
    ["--gradio-queue"], ["--no-gradio-queue"], ["--skip-version-check"], ["--no-hashing"],
    ["--no-download-sd-model"], ["--subpath", "/sd"], ["--add-stop-route"], ["--api-server-stop"],
    ["--timeout-keep-alive", "30"], ["--disable-all-extensions"], ["--disable-extra-extensions"],
    ["--skip-load-model-at-start"], ["--unix-filenames-sanitization"], ["--filenames-max-length", "128"],
    ["--no-prompt-history"],
]


@pytest.mark.parametrize("flag", A1111_FLAGS, ids=lambda f: f[0])
def test_every_a1111_flag_is_accepted(flag, caplog):
    import logging

    args = app.parse_args(flag)
    with caplog.at_level(logging.INFO, logger="app"):
        app.announce_compat_flags(args)


def test_all_a1111_flags_together_make_settings(caplog):
    import logging

    args = app.parse_args([part for flag in A1111_FLAGS for part in flag])
    with caplog.at_level(logging.INFO, logger="app"):
        app.announce_compat_flags(args)
    settings = app.settings_from_args(args)
    assert settings.device == "cpu" and settings.precision == "fp32"  # --use-cpu all, --precision full
    assert "--ngrok: accepted, no effect here" in caplog.text
    assert settings.upcast_sampling


def test_a1111_cpu_recipe_and_precision_names():
    recipe = app.parse_args(["--use-cpu", "all", "--precision", "full", "--no-half", "--skip-torch-cuda-test"])
    assert (app.settings_from_args(recipe).device, app.settings_from_args(recipe).precision) == ("cpu", "fp32")
    assert app.settings_from_args(app.parse_args(["--precision", "half"])).precision == "fp16"
    assert app.settings_from_args(app.parse_args(["--precision", "autocast"])).precision == "auto"
    assert app.settings_from_args(app.parse_args(["--device-id", "1"])).device == "cuda:1"
    assert app.settings_from_args(app.parse_args(["--use-cpu", "gfpgan"])).device == "auto"
    assert app.settings_from_args(app.parse_args([])).nan_check
    assert not app.settings_from_args(app.parse_args(["--disable-nan-check"])).nan_check
    with pytest.raises(SystemExit, match="device index"):
        app.settings_from_args(app.parse_args(["--device-id", "gpu"]))


def test_serving_flags_decide_exposure_and_local_features(tmp_path):
    assert app.settings_from_args(app.parse_args([])).local_only
    for exposed in (["--listen"], ["--share"], ["--server-name", "0.0.0.0"], ["--hide-ui-dir-config"]):
        assert not app.settings_from_args(app.parse_args([*exposed, "--gradio-auth", "u:p"])).local_only, exposed
    assert app.settings_from_args(app.parse_args(["--server-name", "127.0.0.1"])).local_only
    with pytest.raises(SystemExit, match="--gradio-auth"):
        app.check_exposure(app.parse_args(["--server-name", "0.0.0.0"]))
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("alice:one\nbob:two,carol:three\n")
    args = app.parse_args(["--server-name", "0.0.0.0", "--gradio-auth-path", str(auth_file)])
    app.check_exposure(args)
    assert app.ui_credentials(args) == [("alice", "one"), ("bob", "two"), ("carol", "three")]
    frozen = app.settings_from_args(app.parse_args(["--freeze-specific-settings", "samples_save, sd_vae"]))
    assert frozen.frozen_settings == {"samples_save", "sd_vae"} and not frozen.freeze_all_settings


def test_cmd_flags_hide_credentials_and_absolute_paths(tmp_path):
    import flags

    args = app.parse_args(["--data-dir", str(tmp_path), "--lora-dir", str(tmp_path / "models" / "Lora"),
                           "--vae-dir", "/elsewhere/vae", "--gradio-auth", "u:p", "--api-auth", "a:b",
                           "--opt-sdp-attention"])
    shown = flags.cmd_flags(args, tmp_path)
    assert shown["opt_sdp_attention"] is True and "gradio_auth" not in shown and "api_auth" not in shown
    assert shown["lora_dir"] == "models/Lora" and shown["vae_dir"] == "vae" and shown["data_dir"] == "."
    assert not any(str(tmp_path) in str(v) for v in shown.values())


def test_unsafe_and_unknown_flags_are_refused():
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


def test_several_accounts_get_private_outputs_unless_shared(tmp_path):
    base = ["--data-dir", str(tmp_path)]
    assert not app.settings_from_args(app.parse_args([*base, "--gradio-auth", "alice:1"])).private_outputs
    assert app.settings_from_args(app.parse_args([*base, "--gradio-auth", "alice:1", "--api-auth", "bob:2"])
                                  ).private_outputs
    shared = app.parse_args([*base, "--gradio-auth", "alice:1,bob:2", "--shared-outputs", "--max-queued-per-user", "3"])
    assert not app.settings_from_args(shared).private_outputs
    assert app.settings_from_args(shared).max_queued_per_user == 3
