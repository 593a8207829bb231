"""A1111 1.10's settings ("options"): every name with its default, type-checked updates, and which ones this
project really implements. Owned by the service; GET/POST /sdapi/v1/options and the UI read and write it."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

from backend.errors import InvalidRequest

DEFAULTS_FILE = Path(__file__).resolve().parent / "configs" / "a1111_options.json"

# Where this project's default differs from A1111's, on purpose.
OUR_DEFAULTS = {
    "randn_source": "CPU",  # A1111 defaults to GPU noise; CPU noise gives the same image on every machine
}

# Options that change what this project does. Every other A1111 option is accepted and stored (clients set
# them routinely) but has no effect yet: POST /options names them in its answer, and the API docs list them.
IMPLEMENTED = frozenset({
    "sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "return_grid", "samples_format",
    "randn_source", "emphasis", "eta_noise_seed_delta", "eta_ancestral", "eta_ddim", "s_churn", "s_tmin",
    "s_tmax", "s_noise",
})

# The only values of these options that are implemented; another value is refused rather than pretended.
SUPPORTED_VALUES = {
    "samples_format": ("png",),
    "randn_source": ("CPU", "GPU", "NV"),
    "emphasis": ("Original", "No norm", "None"),
}

MAX_TEXT = 4096
MAX_LIST = 256


def load_defaults() -> dict:
    defaults = json.loads(DEFAULTS_FILE.read_text())
    defaults.update(OUR_DEFAULTS)
    return defaults


class Options:
    """The current option values. Thread-safe: the API, the UI and the worker read it concurrently."""

    def __init__(self, defaults: dict | None = None):
        self.defaults = defaults if defaults is not None else load_defaults()
        self._values = dict(self.defaults)
        self._lock = threading.Lock()

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
        """Store values that went through `check`."""
        with self._lock:
            self._values.update(values)

    def _checked(self, name: str, value):
        default = self.defaults[name]
        expected = _type_name(default)
        if not _has_type(value, default):
            raise InvalidRequest(name, f"expected {expected}, got {json.dumps(value)[:80]}")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise InvalidRequest(name, f"is longer than {MAX_TEXT} characters")
        if isinstance(value, list) and (len(value) > MAX_LIST or not all(isinstance(v, str) for v in value)):
            raise InvalidRequest(name, f"expected a list of at most {MAX_LIST} strings")
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
