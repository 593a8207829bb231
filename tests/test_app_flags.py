import pytest

import app


def test_flags_become_settings(tmp_path):
    args = app.parse_args(["--data-dir", str(tmp_path), "--no-half", "--prediction-type", "m.safetensors=v",
                           "--max-size", "1024", "--ckpt", "m"])
    s = app.settings_from_args(args)
    assert s.checkpoint_dir == tmp_path / "models" / "Stable-diffusion"
    assert s.outputs_dir == tmp_path / "outputs"
    assert s.precision == "fp32" and s.default_checkpoint == "m"
    assert s.prediction_overrides == {"m.safetensors": "v_prediction"}
    assert s.limits.max_width == 1024


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
    with pytest.raises(SystemExit):
        app.check_exposure(app.parse_args(["--listen", "--gradio-auth", "u:p", "--api"]))
