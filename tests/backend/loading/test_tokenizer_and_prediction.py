import torch

from backend.loading import prediction
from backend.loading.build import build_tokenizer
from backend.loading.detect import TextEncoderSpec


def _tokenizer(pad):
    return build_tokenizer(TextEncoderSpec("", "clip", {}, False, pad))


def test_shipped_vocabulary_tokenizes_like_clip():
    assert _tokenizer("<|endoftext|>")("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_sd2_tokenizer_pads_with_exclamation_mark():
    ids = _tokenizer("!")("a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == 0
    ids = _tokenizer("<|endoftext|>")("a cat", padding="max_length", max_length=77).input_ids
    assert ids[-1] == 49407


def test_yaml_sidecar_decides_v_prediction(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    assert prediction.from_sidecar(ckpt) is None
    ckpt.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert prediction.from_sidecar(ckpt) == prediction.V_PREDICTION
    ckpt.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert prediction.from_sidecar(ckpt) == prediction.EPSILON


def test_v_pred_key_marks_v_prediction():
    assert prediction.from_keys({"v_pred": 1, "x": 2}) == prediction.V_PREDICTION
    assert prediction.from_keys({"x": 2}) is None


def test_numeric_probe_tells_epsilon_from_v():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alphas = torch.cumprod(1 - betas, 0)

    def ideal_epsilon_model(x, t):
        return x / (1 - alphas[t]).sqrt()  # x0 = 0, so x = sqrt(1-a) * eps

    def ideal_v_model(x, t):
        return alphas[t].sqrt() * x / (1 - alphas[t]).sqrt()

    assert prediction.probe(ideal_epsilon_model, alphas) == prediction.EPSILON
    assert prediction.probe(ideal_v_model, alphas) == prediction.V_PREDICTION
