"""A1111 1.10's settings ("options"): every name with its default, type-checked updates, and which ones this
project really implements. Owned by the service; GET/POST /sdapi/v1/options and the UI read and write it."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from pathlib import Path

from backend.errors import InvalidRequest
from backend.generation.preview import PREVIEW_TYPES
from backend.outputs import FORMATS
from backend.samplers import UNIPC_VARIANTS, UniPCSettings

log = logging.getLogger(__name__)

DEFAULTS_FILE = Path(__file__).resolve().parent / "configs" / "a1111_options.json"

# Where this project's default differs from A1111's, on purpose.
OUR_DEFAULTS = {
    "randn_source": "CPU",  # A1111 defaults to GPU noise; CPU noise gives the same image on every machine
    # not in A1111's options (it keeps them in ui-config.json): what the generation tabs start with
    "default_sampler": "DPM++ 2M",
    "default_scheduler": "Automatic",
    # the sd-webui-controlnet extension's settings (built in here)
    "control_net_unit_count": 3,
    "control_net_no_detectmap": False,
}

# Options that change what this project does. Every other A1111 option is accepted and stored (clients set
# them routinely) but has no effect yet: POST /options names them in its answer, and the API docs list them.
IMPLEMENTED = frozenset({
    "sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "return_grid", "samples_format",
    "randn_source", "emphasis", "eta_noise_seed_delta", "eta_ancestral", "eta_ddim", "s_churn", "s_tmin",
    "s_tmax", "s_noise", "save_incomplete_images", "interrupt_after_current", "samples_save", "default_sampler",
    "default_scheduler", "tiling", "s_min_uncond", "s_min_uncond_all", "initial_noise_multiplier",
    "pad_cond_uncond", "pad_cond_uncond_v0", "batch_cond_uncond", "auto_vae_precision",
    "live_previews_enable", "show_progress_every_n_steps", "show_progress_type",
    "grid_format", "jpeg_quality", "webp_lossless", "hires_fix_refiner_pass", "img_max_size_mp", "grid_save",
    "token_merging_ratio", "token_merging_ratio_hr", "token_merging_ratio_img2img",
    "uni_pc_variant", "uni_pc_skip_type", "uni_pc_order", "uni_pc_lower_order_final",
    "control_net_unit_count", "control_net_no_detectmap", "upscaler_for_img2img",
    "img2img_background_color", "inpainting_mask_weight", "img2img_fix_steps",
    "img2img_extra_noise", "skip_early_cond", "always_discard_next_to_last_sigma",
    "sdxl_refiner_low_aesthetic_score", "sdxl_refiner_high_aesthetic_score", "sgm_noise_multiplier",
    "sigma_min", "sigma_max", "rho",
})

# A1111 options that change the pixels A1111 makes and are not implemented here yet: any value but A1111's
# default is refused (POST /options, override_settings, config.json), never stored and pretended.
UNIMPLEMENTED_GENERATION = frozenset({

    "use_old_emphasis_implementation", "use_old_karras_scheduler_sigmas",
    "no_dpmpp_sde_batch_determinism", "use_old_hires_fix_width_height", "hires_fix_use_firstpass_conds",
    "use_old_scheduling", "upcast_attn", "img2img_color_correction",
    "sd_unet", "sd_noise_schedule",
    "comma_padding_backtrack", "enable_quantization", "sd_vae_decode_method", "sd_vae_encode_method",
    "sd_hypernetwork", "refiner_switch_by_sample_steps",
})

# The only values of these options that are implemented; another value is refused rather than pretended.
SUPPORTED_VALUES = {
    "samples_format": FORMATS,
    "grid_format": FORMATS,
    "randn_source": ("CPU", "GPU", "NV"),
    "emphasis": ("Original", "No norm", "None"),
    "uni_pc_variant": UNIPC_VARIANTS,
    "show_progress_type": PREVIEW_TYPES,
    "hires_fix_refiner_pass": ("first pass", "second pass", "both passes"),
}

MAX_TEXT = 4096
MAX_LIST = 256
MAX_STORED_BYTES = 1024 * 1024  # all changed options together, as JSON: far above any real config.json


def load_defaults() -> dict:
    defaults = json.loads(DEFAULTS_FILE.read_text())
    defaults.update(OUR_DEFAULTS)
    return defaults


class Options:
    """The current option values. Thread-safe: the API, the UI and the worker read it concurrently. With a
    `path` (A1111's config.json in the data dir) they are read at start and written after every change; a
    value there of the wrong type, or an unknown name, is skipped with a log line."""

    def __init__(self, defaults: dict | None = None, path: Path | None = None):
        self.defaults = defaults if defaults is not None else load_defaults()
        self._values = dict(self.defaults)
        self._lock = threading.Lock()
        self.path = path
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            log.warning("ignoring %s: %s", path.name, err)
            return
        for name, value in (stored.items() if isinstance(stored, dict) else ()):
            try:
                known, _ = self.check({name: value})
            except InvalidRequest as err:
                log.warning("%s: skipping %s", path.name, err)
                continue
            self._values.update(known)

    def _save(self) -> None:
        """The values that differ from the defaults, written atomically (a crash never leaves half a file)."""
        if self.path is None:
            return
        changed = {k: v for k, v in self._values.items() if v != self.defaults.get(k)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(changed, f, indent=1, ensure_ascii=False)
        os.replace(tmp, self.path)

    def get(self, name: str):
        with self._lock:
            return self._values[name]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._values)

    def check(self, updates: dict) -> tuple[dict, list[str]]:
        """Split `updates` into checked known values and the unknown names (which are never stored).
        A known name with a value of the wrong type raises InvalidRequest naming it."""
        known, unknown = {}, []
        for name, value in updates.items():
            if name not in self.defaults:
                unknown.append(str(name)[:100])
                continue
            known[name] = self._checked(name, value)
        return known, unknown

    def update(self, values: dict) -> None:
        """Store values that went through `check` (and write config.json). The options together stay under
        MAX_STORED_BYTES, so no sequence of requests can grow the file (and every read of it) without bound."""
        with self._lock:
            merged = {**self._values, **values}
            changed = {k: v for k, v in merged.items() if v != self.defaults.get(k)}
            if len(json.dumps(changed, ensure_ascii=False).encode("utf-8")) > MAX_STORED_BYTES:
                raise InvalidRequest(next(iter(values), "options"), f"the settings would exceed "
                                     f"{MAX_STORED_BYTES // 1024} KB together; not stored")
            self._values = merged
            try:
                self._save()
            except OSError as err:
                log.warning("could not write the settings file: %s", err)

    def _checked(self, name: str, value):
        default = self.defaults[name]
        expected = _type_name(default)
        if not _has_type(value, default):
            raise InvalidRequest(name, f"expected {expected}, got {json.dumps(value)[:80]}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise InvalidRequest(name, f"is longer than {MAX_TEXT} characters")
        if isinstance(value, list) and (len(value) > MAX_LIST or not all(isinstance(v, str) for v in value)):
            raise InvalidRequest(name, f"expected a list of at most {MAX_LIST} strings")
        if isinstance(value, list) and any(len(v) > MAX_TEXT for v in value):
            raise InvalidRequest(name, f"a list item is longer than {MAX_TEXT} characters")
        if isinstance(value, dict) and len(json.dumps(value)) > MAX_TEXT:
            raise InvalidRequest(name, f"is larger than {MAX_TEXT} characters as JSON")
        if name in UNIMPLEMENTED_GENERATION and value != default:
            raise InvalidRequest(name, f"is not implemented yet: only A1111's default ({json.dumps(default)}) is "
                                       "accepted, so that no image is made without it while claiming it")
        supported = SUPPORTED_VALUES.get(name)
        if supported is not None and value not in supported:
            raise InvalidRequest(name, f"{value!r} is not supported yet; supported: {', '.join(supported)}")
        return value


def _has_type(value, default) -> bool:
    if default is None:
        return value is None or isinstance(value, str)
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, type(default))


def _type_name(default) -> str:
    if default is None:
        return "a string or null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(default), type(default).__name__)


def docs_text() -> str:
    """What the API docs say about GET/POST /options."""
    return ("A1111 1.10's options with their defaults. POST accepts these names (type-checked; unknown names are "
            "ignored and reported, never stored). Implemented: " + ", ".join(sorted(IMPLEMENTED)) + ". Every other "
            "option is stored and returned but has no effect yet; POST lists those it received under "
            "`not_implemented`.")


def request_fields(values: dict) -> dict:
    """The GenerationRequest fields A1111 takes from its options (the API and the UI both use them). Both etas
    go along: the sampler that runs picks its kind's (eta_ddim for DDIM, eta_ancestral otherwise), so a sampler
    changed later (hires, X/Y/Z) still gets the right one."""
    def number(name, default):
        value = values.get(name)
        return default if value is None else value

    return dict(
        clip_skip=int(number("CLIP_stop_at_last_layers", 1)),
        eta_noise_seed_delta=int(number("eta_noise_seed_delta", 0) or 0),
        rng_source=values.get("randn_source") or "CPU",
        emphasis=values.get("emphasis") or "Original",
        eta_ddim=float(number("eta_ddim", 0.0)), eta_ancestral=float(number("eta_ancestral", 1.0)),
        s_churn=float(number("s_churn", 0.0)), s_tmin=float(number("s_tmin", 0.0)),
        s_tmax=float(number("s_tmax", 0.0)), s_noise=float(number("s_noise", 1.0)),
        tiling=bool(values.get("tiling")),
        s_min_uncond=float(number("s_min_uncond", 0.0)), s_min_uncond_all=bool(values.get("s_min_uncond_all")),
        initial_noise_multiplier=float(number("initial_noise_multiplier", 1.0)),
        hires_refiner_pass=values.get("hires_fix_refiner_pass") or "second pass",
        img2img_upscaler=values.get("upscaler_for_img2img"),
        img2img_background=values.get("img2img_background_color") or "#ffffff",
        inpainting_mask_weight=float(number("inpainting_mask_weight", 1.0)),
        img2img_fix_steps=bool(values.get("img2img_fix_steps")),
        img2img_extra_noise=float(number("img2img_extra_noise", 0.0)),
        skip_early_cond=float(number("skip_early_cond", 0.0)),
        discard_penultimate_sigma=bool(values.get("always_discard_next_to_last_sigma")),
        sgm_noise_multiplier=bool(values.get("sgm_noise_multiplier")),
        schedule_sigma_min=float(number("sigma_min", 0.0)), schedule_sigma_max=float(number("sigma_max", 0.0)),
        schedule_rho=float(number("rho", 0.0)),
        refiner_aesthetic_scores=(float(number("sdxl_refiner_low_aesthetic_score", 2.5)),
                                  float(number("sdxl_refiner_high_aesthetic_score", 6.0))),
        token_merging_ratio=float(number("token_merging_ratio", 0.0)),
        token_merging_ratio_hr=float(number("token_merging_ratio_hr", 0.0)),
        token_merging_ratio_img2img=float(number("token_merging_ratio_img2img", 0.0)),
        # A1111's CFGDenoiser checks v0 first
        pad_conds="v0" if values.get("pad_cond_uncond_v0") else "pad" if values.get("pad_cond_uncond") else "",
        batch_cond_uncond=values.get("batch_cond_uncond") is not False,
        unipc=UniPCSettings(variant=values.get("uni_pc_variant") or "bh1",
                            skip_type=values.get("uni_pc_skip_type") or "time_uniform",
                            order=int(number("uni_pc_order", 3)),
                            lower_order_final=bool(number("uni_pc_lower_order_final", True))),
    )
