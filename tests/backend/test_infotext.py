from backend import infotext


def test_layout_order_and_quoting():
    text = infotext.build("a cat, sitting", "ugly", {
        "Version": "v0.1.0", "Seed": 5, "Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras",
        "CFG scale": 7.0, "Size": "512x768", "Model hash": "0123456789", "Model": "my, model",
        "Mask blur": 4, "Clip skip": None})
    lines = text.split("\n")
    assert lines[0] == "a cat, sitting"
    assert lines[1] == "Negative prompt: ugly"
    assert lines[2] == ('Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 5, Size: 512x768, '
                        'Model hash: 0123456789, Model: "my, model", Mask blur: 4, Version: v0.1.0')


def test_negative_line_left_out_when_empty():
    assert infotext.build("p", "", {"Steps": 1, "Sampler": "Euler", "Seed": 1}).split("\n") == [
        "p", "Steps: 1, Sampler: Euler, Seed: 1"]


def test_round_trip_of_everything_we_write():
    params = {"Steps": 30, "Sampler": "Euler a", "Schedule type": "Uniform", "CFG scale": 6.5, "Seed": 42,
              "Size": "640x448", "Model hash": "abcdef0123", "Model": "odd: name", "Denoising strength": 0.6,
              "Clip skip": 2, "Mask blur": 4, "Inpaint area": "Only masked", "Masked area padding": 32,
              "Masked content": "latent noise", "Version": "v0.1.0"}
    prompt = "line one\nline two, (with: colon)"
    parsed = infotext.parse(infotext.build(prompt, "neg\nmore", params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == "neg\nmore"
    for key, value in params.items():
        assert parsed[key] == str(value), key
    assert (parsed["Size-1"], parsed["Size-2"]) == ("640", "448")


def test_parse_prompt_only_text():
    parsed = infotext.parse("just a prompt, with commas")
    assert parsed["Prompt"] == "just a prompt, with commas"
    assert "Steps" not in parsed
