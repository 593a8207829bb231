"""A1111 "infotext": the generation parameters text stored in every image, and its parser."""

from __future__ import annotations

import json
import re

# Keys in the order A1111 writes them; anything else follows, then Version last.
KEY_ORDER = ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash",
             "VAE", "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
             "Conditional mask weight", "Clip skip", "ENSD", "RNG", "Tiling"]

_PARAM = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: object) -> str:
    text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def build(prompt: str, negative_prompt: str, params: dict[str, object]) -> str:
    """Infotext for one image. `params` values that are None are left out; Version always comes last."""
    ordered = [k for k in KEY_ORDER if k in params] + [k for k in params if k not in KEY_ORDER and k != "Version"]
    if "Version" in params:
        ordered.append("Version")
    line = ", ".join(f"{k}: {quote(params[k])}" for k in ordered if params[k] is not None)
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(line)
    return "\n".join(lines)


def parse(text: str) -> dict[str, object]:
    """Infotext -> {"Prompt", "Negative prompt", and each parameter}. `Size: WxH` also gives "Size-1"/"Size-2"."""
    *lines, last = text.strip().split("\n") if text.strip() else [""]
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].lstrip()
        (negative if in_negative else prompt).append(line)
    result: dict[str, object] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        key, value = key.strip(), value.strip()
        if value.startswith('"') and value.endswith('"'):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        result[key] = value
        size = _SIZE.match(value) if isinstance(value, str) else None
        if size:  # any "WxH" value (Size, Seed resize from, Hires resize) also gives "<key>-1" and "<key>-2"
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
    return result


def hires_enabled(params: dict) -> bool:
    """A1111's paste rule: parsed parameters turn hires fix on when they have a denoising strength together with
    a hires scale, upscaler or resize (other `Hires ...` keys, e.g. Forge's `Hires CFG Scale`, do not)."""
    return "Denoising strength" in params and any(k in params for k in ("Hires upscale", "Hires upscaler",
                                                                         "Hires resize-1"))
