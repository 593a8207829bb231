"""X/Y/Z plot on the tiny SD1 checkpoint: A1111's axis indices and value parsing, each cell equal to its own
request, the grid as A1111 draws it, the grid infotext, seeds, and refusals before anything runs."""

import time

import numpy as np
from PIL import Image
import pytest

from backend.errors import InvalidRequest
from backend.generation.requests import GenerationRequest
from backend.grid import GridText, annotate, make_grid
from backend.scripts import xyz_grid
from backend.scripts.xyz_grid import axes_for, expand_floats, expand_ints, split_csv


def _args(x_type=1, x_values="", y_type=0, y_values="", z_type=0, z_values="", **flags):
    """A1111's 18 positional script_args."""
    names = ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
             "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")
    defaults = dict(draw_legend=True, include_lone_images=False, include_sub_grids=False, no_fixed_seeds=False,
                    vary_seeds_x=False, vary_seeds_y=False, vary_seeds_z=False, margin_size=0, csv_mode=False)
    defaults.update(flags)
    dropdowns = flags.pop("dropdowns", ([], [], []))
    return [x_type, x_values, dropdowns[0], y_type, y_values, dropdowns[1], z_type, z_values, dropdowns[2],
            *(defaults[n] for n in names)]


def _req(**kw):
    base = dict(prompt="a red fox", negative_prompt="blurry", steps=2, width=64, height=64, seed=11,
                sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False)
    base.update(kw)
    return GenerationRequest(**base)


def _pixels(image):
    return np.asarray(image.convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------ A1111's tables

def test_axis_indices_are_a1111s():
    txt = [a.label for a in axes_for("txt2img")]
    img = [a.label for a in axes_for("img2img")]
    assert len(txt) == 42 and len(img) == 41
    for index, label in ((1, "Seed"), (5, "Hires steps"), (7, "Prompt S/R"), (9, "Sampler"), (11, "Checkpoint name"),
                         (17, "Schedule type"), (24, "Clip skip"), (25, "Denoising"), (28, "Hires upscaler"),
                         (29, "VAE"), (31, "UniPC Order"), (39, "RNG source"), (41, "Size")):
        assert txt[index] == label
    for index, label in ((5, "CFG Scale"), (6, "Image CFG Scale"), (9, "Sampler"), (10, "Checkpoint name"),
                         (24, "Denoising"), (27, "Cond. Image Mask Weight"), (28, "VAE"), (40, "Size")):
        assert img[index] == label


@pytest.mark.parametrize("text, expected", [
    ("1-5", [1, 2, 3, 4, 5]), ("1-5 (+2)", [1, 3, 5]), ("10-5 (-3)", [10, 7]), ("10-1 (-3)", [10, 7, 4]),
    ("1-10 [5]", [1, 3, 5, 7, 10]), ("-1", ["-1"]), ("7", ["7"]),
])
def test_int_ranges_as_a1111(text, expected):
    assert expand_ints([text]) == expected


@pytest.mark.parametrize("text, expected", [
    ("1-3 (+0.5)", [1.0, 1.5, 2.0, 2.5, 3.0]), ("0.0-1.0 [6]", [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    ("5-7", [5.0, 6.0, 7.0]), ("2.5", ["2.5"]),
])
def test_float_ranges_as_a1111(text, expected):
    assert expand_floats([text]) == pytest.approx(expected) if not isinstance(expected[0], str) \
        else expand_floats([text]) == expected


def test_values_are_csv_with_quotes():
    assert split_csv('a, "b, c" ,d') == ["a", "b, c", "d"]


def test_costly_axis_is_outermost(service):
    catalog = service.script_catalog("txt2img")
    checkpoints = [c for c in catalog.checkpoints if c.startswith("sd1")][:2]
    settings = xyz_grid.settings(_args(1, "1,2", 11, "", dropdowns=([], checkpoints, [])), catalog)
    order = xyz_grid.cell_order(settings)
    assert order == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]  # Y (checkpoints) outermost: X changes fastest
    settings = xyz_grid.settings(_args(11, "", 1, "1,2", dropdowns=(checkpoints, [], [])), catalog)
    assert xyz_grid.cell_order(settings) == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]


# ------------------------------------------------------------------ the plot

def test_each_cell_equals_its_own_request_and_the_grid_is_a1111s(service):
    script = service.script("X/Y/Z plot", _args(4, "2,3", 6, "5, 9", include_lone_images=True), "txt2img")
    result = service.generate(_req(script=script))
    assert len(result.images) == 1 + 4 and len(result.infotexts) == 5 and len(result.seeds) == 5
    cells = result.images[1:]
    for image, (steps, cfg) in zip(cells, [(2, 5.0), (3, 5.0), (2, 9.0), (3, 9.0)], strict=True):
        alone = service.generate(_req(steps=steps, cfg_scale=cfg)).images[0]
        assert np.array_equal(_pixels(image), _pixels(alone))
    for text, (steps, cfg) in zip(result.infotexts[1:], [(2, 5.0), (3, 5.0), (2, 9.0), (3, 9.0)], strict=True):
        assert f"Steps: {steps}," in text and f"CFG scale: {cfg}," in text and "Script" not in text
    expected = annotate(make_grid(cells, rows=2), 64, 64, [[GridText("Steps: 2")], [GridText("Steps: 3")]],
                        [[GridText("CFG Scale: 5.0")], [GridText("CFG Scale: 9.0")]])
    assert np.array_equal(_pixels(result.images[0]), _pixels(expected))
    assert result.images[0].width > 128 and result.images[0].height > 128  # the legend's room
    grid_text = result.infotexts[0]
    assert "Steps: 2," in grid_text and "Script: X/Y/Z plot, X Type: Steps, X Values: \"2,3\", Y Type: CFG Scale, " \
                                        "Y Values: \"5, 9\"" in grid_text
    assert result.seeds == [11] * 5


def test_without_legend_the_grid_is_the_plain_cells_and_margins_need_the_legend(service):
    script = service.script("X/Y/Z plot", _args(4, "2,3", draw_legend=False, margin_size=10,
                                                include_lone_images=True), "txt2img")
    result = service.generate(_req(script=script))
    assert np.array_equal(_pixels(result.images[0]), _pixels(make_grid(result.images[1:], rows=1)))


def test_prompt_sr_and_seed_axes(service):
    script = service.script("X/Y/Z plot", _args(7, "fox, cat", 1, "-1, 5", include_lone_images=True), "txt2img")
    result = service.generate(_req(script=script))
    cat = service.generate(_req(prompt="a red cat", negative_prompt="blurry", seed=5)).images[0]
    assert np.array_equal(_pixels(result.images[4]), _pixels(cat))  # (x=cat, y=seed 5)
    drawn = result.seeds[1]
    assert drawn != -1 and result.seeds[1:] == [drawn, drawn, 5, 5]
    assert f"Fixed Y Values: \"{drawn}, 5\"" in result.infotexts[0]


def test_vary_seeds_along_x(service):
    script = service.script("X/Y/Z plot", _args(4, "2,2,2", vary_seeds_x=True, include_lone_images=True),
                            "txt2img")
    assert service.generate(_req(script=script)).seeds[1:] == [11, 12, 13]


def test_sub_grids_with_z_and_saving(service, tmp_path):
    script = service.script("X/Y/Z plot", _args(4, "2,3", 0, "", 6, "5,9", include_sub_grids=True), "txt2img")
    result = service.generate(_req(script=script))
    assert len(result.images) == 3  # the Z grid, then a sub-grid per Z value
    assert "Z Type: CFG Scale" in result.infotexts[0] and "Z Type" not in result.infotexts[1]
    assert result.images[0].width > 2 * result.images[1].width - 1


def test_refused_before_anything_runs(service):
    with pytest.raises(InvalidRequest, match="Face restore' cannot be used"):
        service.script("X/Y/Z plot", _args(32, "true"), "txt2img")
    with pytest.raises(InvalidRequest, match="Prompt S/R did not find dog"):
        service.submit(_req(script=service.script("X/Y/Z plot", _args(7, "dog, cat"), "txt2img")))
    with pytest.raises(InvalidRequest, match="x_values_dropdown"):
        service.script("X/Y/Z plot", _args(9, "Euler, DDIM"), "txt2img")
    with pytest.raises(InvalidRequest, match="unknown sampler|Nope"):
        service.submit(_req(script=service.script("X/Y/Z plot", _args(9, "Euler, Nope", csv_mode=True), "txt2img")))
    with pytest.raises(InvalidRequest, match="not WIDTHxHEIGHT"):
        service.submit(_req(script=service.script("X/Y/Z plot", _args(41, "64x64, big"), "txt2img")))
    with pytest.raises(InvalidRequest, match="too large"):
        service.submit(_req(script=service.script("X/Y/Z plot", _args(1, "1-400", 4, "1-2"), "txt2img"), width=512,
                            height=512))
    with pytest.raises(InvalidRequest, match="not an integer"):
        service.script("X/Y/Z plot", _args(4, "2, many"), "txt2img")
    with pytest.raises(InvalidRequest, match="unknown script"):
        service.script("X/Y/Z plot", _args(), "extras")


def test_interrupt_stops_the_plot_and_keeps_what_was_made(service):
    script = service.script("X/Y/Z plot", _args(1, "1-6", include_lone_images=True), "txt2img")
    job = service.submit(_req(script=script, steps=12))
    deadline = time.monotonic() + 60
    while job.progress.job_no < 2 and not job.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    job.cancel()
    result = job.wait(60)
    assert result.interrupted
    assert len(result.images) == 7  # the grid and six cells, the ones never made black
    assert _pixels(result.images[-1]).max() == 0 and _pixels(result.images[1]).max() > 0


def test_refiner_axis(service):
    title = service.registry.find_checkpoint("sd2-v.safetensors").title
    script = service.script("X/Y/Z plot", _args(37, "", 38, "0.3, 0.6", dropdowns=(["None", title], [], []),
                                                include_lone_images=True), "txt2img")
    result = service.generate(_req(steps=4, script=script))
    plain = service.generate(_req(steps=4)).images[0]
    refined = service.generate(_req(steps=4, refiner_checkpoint=title, refiner_switch_at=0.6)).images[0]
    assert np.array_equal(_pixels(result.images[1]), _pixels(plain))  # x = None
    assert np.array_equal(_pixels(result.images[4]), _pixels(refined))  # x = sd2-v, y = 0.6


@pytest.mark.parametrize("axis, text, dropdown, fields", [
    (9, "", ["DDIM"], dict(sampler_name="DDIM")),  # Sampler (txt2img's list)
    (11, "", ["sd2-v.safetensors"], dict(checkpoint="sd2-v.safetensors")),  # Checkpoint name
    (17, "", ["Karras"], dict(scheduler="Karras")),  # Schedule type
    (24, "2", [], dict(clip_skip=2)),  # Clip skip
    (41, "64x96", [], dict(width=64, height=96)),  # Size
    (29, "", ["None"], dict(vae="None")),  # VAE
    (39, "", ["NV"], dict(rng_source="NV")),  # RNG source
    (3, "0.5", [], dict(subseed=4, subseed_strength=0.5)),  # Var. strength (with the request's variation seed)
])
def test_an_axis_cell_equals_its_request(service, axis, text, dropdown, fields):
    script = service.script("X/Y/Z plot", _args(axis, text, dropdowns=(dropdown, [], []), include_lone_images=True),
                            "txt2img")
    base = dict(subseed=4) if "subseed" in fields else {}
    cell = service.generate(_req(script=script, **base)).images[1]
    alone = service.generate(_req(**fields)).images[0]
    assert np.array_equal(_pixels(cell), _pixels(alone))


def test_styles_axis_adds_the_style_as_a1111(service):
    service.save_style("xyz-test-style", "in the rain, {prompt}", "sunny")
    script = service.script("X/Y/Z plot", _args(30, "", dropdowns=(["xyz-test-style"], [], []),
                                                include_lone_images=True), "txt2img")
    result = service.generate(_req(script=script))
    alone = service.generate(_req(styles=("xyz-test-style",)))
    assert np.array_equal(_pixels(result.images[1]), _pixels(alone.images[0]))
    assert result.infotexts[1].startswith("in the rain, a red fox\nNegative prompt: blurry, sunny")


def test_keep_minus_one_draws_each_cells_own_seed(service):
    script = service.script("X/Y/Z plot", _args(4, "2,2", no_fixed_seeds=True, include_lone_images=True), "txt2img")
    result = service.generate(_req(seed=-1, script=script))
    assert result.seeds[1] != result.seeds[2] and -1 not in result.seeds
    fixed = service.script("X/Y/Z plot", _args(4, "2,2", include_lone_images=True), "txt2img")
    again = service.generate(_req(seed=-1, script=fixed))
    assert again.seeds[1] == again.seeds[2] != -1  # drawn once for the whole plot


def test_saved_as_a1111_names_them(service):
    script = service.script("X/Y/Z plot", _args(4, "2,3"), "txt2img")
    service.generate(_req(script=script, save_images=True, seed=91))
    grids = sorted(p.name for p in service.outputs.root.glob("txt2img-grids/*/xyz_grid-*.png"))
    cells = [p for p in service.outputs.root.glob("txt2img-images/*/*.png") if "-91" in p.name]
    assert grids and grids[-1].startswith("xyz_grid-") and len(cells) == 2  # each cell saved by its own job
    assert "Script: X/Y/Z plot" in Image.open(sorted(service.outputs.root.glob("txt2img-grids/*/xyz_grid-*.png"))[-1]
                                              ).info["parameters"]
