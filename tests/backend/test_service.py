"""The service facade: which checkpoint plain requests use, options, limits, and results that survive a failed
save."""

import pytest

from backend.errors import Interrupted, InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.options import Options
from backend.prompts.encode import encoder_for
from backend.settings import Limits
from tests.conftest import build_backend


def _req(**kw):
    base = dict(prompt="a boat", steps=2, width=64, height=64, seed=3, sampler_name="Euler", save_images=False)
    return GenerationRequest(**{**base, **kw})


@pytest.fixture(scope="module")
def svc(models_dir, tmp_path_factory):
    service = build_backend(models_dir, tmp_path_factory.mktemp("out"), default_checkpoint="sd1.safetensors")
    yield service
    service.shutdown()


def test_plain_requests_use_the_selected_model_not_the_start_flag(svc):
    assert svc.generate(_req()).checkpoint.name == "sd1.safetensors"
    svc.select_checkpoint("sd2-v.safetensors").wait(60)
    try:
        assert svc.current_checkpoint().name == "sd2-v.safetensors"
        assert svc.generate(_req()).checkpoint.name == "sd2-v.safetensors"
        # a request naming a model runs on it without changing the selection
        assert svc.generate(_req(checkpoint="sd1.safetensors")).checkpoint.name == "sd1.safetensors"
        assert svc.generate(_req()).checkpoint.name == "sd2-v.safetensors"
    finally:
        svc.select_checkpoint("sd1.safetensors").wait(60)


def test_options_are_a1111s_with_type_checks(svc):
    values = svc.get_options()
    for name, default in (("send_seed", True), ("samples_format", "png"), ("CLIP_stop_at_last_layers", 1),
                          ("sd_vae", "Automatic"), ("eta_noise_seed_delta", 0)):
        assert values[name] == default
    assert values["sd_model_checkpoint"].startswith("sd1.safetensors [")
    report = svc.set_options({"no_such_option": "x" * 1000, "jpeg_quality": 90, "CLIP_stop_at_last_layers": 2,
                              "export_for_4chan": False})
    assert report == {"ignored": ["no_such_option"], "not_implemented": ["export_for_4chan"]}
    assert "no_such_option" not in svc.get_options() and svc.get_options()["jpeg_quality"] == 90
    with pytest.raises(InvalidRequest, match="send_seed"):
        svc.set_options({"send_seed": "yes"})
    with pytest.raises(InvalidRequest, match="samples_format"):
        svc.set_options({"samples_format": "bmp"})  # refused, rather than pretending to save BMPs
    svc.set_options({"CLIP_stop_at_last_layers": 1})


def test_option_value_types():
    options = Options({"f": 1.5, "i": 3, "b": False, "s": "x", "l": ["a"], "n": None})
    assert options.check({"f": 2, "i": 4, "b": True, "s": "y", "l": ["b"], "n": "z"})[0]["f"] == 2
    for name, bad in (("f", float("nan")), ("i", 1.5), ("i", True), ("b", 1), ("s", 5), ("l", [1]), ("n", 3)):
        with pytest.raises(InvalidRequest, match=name):
            options.check({name: bad})


def test_prompt_length_is_limited_with_a_message_naming_it(models_dir, tmp_path):
    svc = build_backend(models_dir, tmp_path / "out", limits=Limits(max_prompt_chunks=2))
    try:
        with pytest.raises(InvalidRequest, match="^prompt: is 1000000 characters"):
            svc.submit(_req(prompt="a" * 1_000_000))
        with pytest.raises(InvalidRequest, match="^negative_prompt: is 3 chunks"):
            svc.generate(_req(negative_prompt="cat, " * 100), timeout=60)
        assert len(svc.generate(_req(prompt="cat, " * 30), timeout=60).images) == 1
        with pytest.raises(InvalidRequest, match="surrogate"):
            svc.submit(_req(prompt="\ud800"))
    finally:
        svc.shutdown()


def test_text_encoding_stops_when_interrupted(svc):
    model = svc.models.get(svc.registry.find_checkpoint("sd1.safetensors"))
    calls = []
    hook = model.text_encoders[0].register_forward_pre_hook(lambda *a: calls.append(1))

    def interrupted():
        raise Interrupted("interrupted by the user")

    try:
        with pytest.raises(Interrupted):
            encoder_for(model).encode(["an uncached prompt " * 40], 1, 3, interrupted)
    finally:
        hook.remove()
    assert calls == []


def test_images_come_back_when_saving_fails(models_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("outputs cannot be created under a file")
    svc = build_backend(models_dir, blocker / "outputs")
    try:
        result = svc.generate(_req(save_images=True, batch_size=2), timeout=60)
    finally:
        svc.shutdown()
    assert len(result.images) == 2 and result.paths == [] and result.grid is not None
    assert result.warnings == ["Images were not saved: Not a directory."]
    assert str(tmp_path) not in " ".join(result.warnings)


def test_token_counter_counts_like_a1111(svc, models_dir, tmp_path):
    fresh = build_backend(models_dir, tmp_path / "out")
    try:
        assert fresh.prompt_token_count("a (cat:1.2)") == (2, 75)  # before any model is loaded
    finally:
        fresh.shutdown()
    svc.generate(_req())
    assert svc.prompt_token_count("") == (0, 75)
    assert svc.prompt_token_count("a (cat:1.2) <lora:x:1>") == (2, 75)  # brackets and tags do not count
    assert svc.prompt_token_count("[cat|big dog]") == (2, 75)  # the longest variant
    assert svc.prompt_token_count("cat " * 80) == (80, 150)


def test_styles_merge_into_the_prompts_as_a1111(models_dir, tmp_path):
    from backend.styles import StyleLibrary

    styles_file = tmp_path / "styles.csv"
    styles_file.write_text('name,prompt,negative_prompt\n"Film","{prompt}, 35mm film, grain","cartoon"\n'
                           '"Sharp","sharp focus",""\n')
    svc = build_backend(models_dir, tmp_path / "out", styles_file=styles_file)
    try:
        assert svc.apply_styles("a cat", "blurry", ["Film", "Sharp"]) == ("a cat, 35mm film, grain, sharp focus",
                                                                        "blurry, cartoon")
        result = svc.generate(_req(prompt="a cat", negative_prompt="", styles=("Film",)), timeout=60)
        assert result.infotexts[0].startswith("a cat, 35mm film, grain\nNegative prompt: cartoon\n")
        with pytest.raises(InvalidRequest, match="unknown style"):
            svc.submit(_req(styles=("Nope",)))
        svc.save_style("Mine", "{prompt}, oil", "")
        assert [s.name for s in StyleLibrary(styles_file).all()] == ["Film", "Sharp", "Mine"]
    finally:
        svc.shutdown()


def test_settings_are_kept_in_config_json(tmp_path):
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"eta_noise_seed_delta": 31337, "send_seed": "not a bool", "junk": 1}))
    options = Options(path=path)
    assert options.get("eta_noise_seed_delta") == 31337 and options.get("send_seed") is True
    options.update({"CLIP_stop_at_last_layers": 2})
    stored = json.loads(path.read_text())
    assert stored == {"eta_noise_seed_delta": 31337, "CLIP_stop_at_last_layers": 2}
    assert Options(path=path).get("CLIP_stop_at_last_layers") == 2
