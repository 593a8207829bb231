"""The extension's preprocessors that need no annotator weights, with its algorithms (OpenCV where it uses
OpenCV) and slider defaults. Those that need weights are known by name and refused with the file they need:
nothing is ever downloaded."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from backend.control.images import hwc3
from backend.errors import InvalidRequest


@dataclass(frozen=True)
class Slider:
    label: str
    value: float
    minimum: float
    maximum: float
    step: float = 0.01
    visible: bool = True

    def api_json(self) -> dict:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


RESOLUTION = Slider("Resolution", 512, 64, 2048, 8)
HIDDEN = Slider("EMPTY_LABEL", 0.5, 0.0, 1.0, visible=False)  # the extension's hidden slider (its range resets)

# (image, resolution, slider 1, slider 2, numpy random state) -> detected map (H, W, 3) uint8
Detect = Callable[[np.ndarray, int, float, float, np.random.RandomState], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    detect: Detect
    tags: tuple[str, ...] = ()
    label: str = ""
    resolution: Slider = RESOLUTION
    slider_1: Slider = HIDDEN
    slider_2: Slider = HIDDEN
    priority: int = 0
    soft_in_hires: bool = False  # the extension forces soft injection in the hires pass (canny, mlsd)
    resolution_shown: bool = True
    takes_mask: bool = False  # inpaint: the map is RGBA, the unit's (or img2img's) mask in the alpha channel
    adjusts_output: str = ""  # "inpaint_only" / "colorfix": the extension's change of each UNet output
    post_process: str = ""  # "inpaint_only" / "recolor_luminance" / "recolor_intensity": on the decoded picture

    @property
    def title(self) -> str:
        return self.label or self.name

    def sliders(self) -> list[dict]:
        """The extension's module_detail sliders: resolution (when shown), then the visible ones."""
        shown = [RESOLUTION] if self.resolution_shown else []
        return [s.api_json() for s in shown + [s for s in (self.slider_1, self.slider_2) if s.visible]]

    def settle(self, processor_res: float, threshold_a: float, threshold_b: float) -> tuple[int, float, float]:
        """Out-of-range values (-1 = unset) take the default, as the extension's unit check does."""
        def within(value, slider: Slider):
            return value if slider.minimum <= value <= slider.maximum else slider.value
        return int(within(processor_res, self.resolution)), float(within(threshold_a, self.slider_1)), \
            float(within(threshold_b, self.slider_2))


def _pad64(x: int) -> int:
    return int(np.ceil(x / 64.0) * 64 - x)


def _resize_with_pad(img: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Short side to `resolution` (cubic up, area down), padded to multiples of 64 with the edge's pixels."""
    img = hwc3(img)
    raw_h, raw_w = img.shape[:2]
    k = resolution / min(raw_h, raw_w)
    target_h, target_w = int(np.round(raw_h * k)), int(np.round(raw_w * k))
    img = cv2.resize(img, (target_w, target_h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    padded = np.pad(img, [[0, _pad64(target_h)], [0, _pad64(target_w)], [0, 0]], mode="edge")
    return np.ascontiguousarray(padded), lambda x: np.ascontiguousarray(x[:target_h, :target_w])


def _none(img, res, a, b, rng):
    return hwc3(img)


def _rgba(img, res, a, b, rng):
    return img  # inpaint: the picture with its mask, as given


def _canny(img, res, a, b, rng):
    padded, unpad = _resize_with_pad(img, res)
    return unpad(cv2.cvtColor(cv2.Canny(padded, int(a), int(b)), cv2.COLOR_GRAY2RGB))


def _invert(img, res, a, b, rng):
    return 255 - hwc3(img)


def _blur_gaussian(img, res, a, b, rng):
    padded, unpad = _resize_with_pad(img, res)
    return cv2.GaussianBlur(unpad(padded), (0, 0), float(a))


def _threshold(img, res, a, b, rng):
    padded, unpad = _resize_with_pad(img, res)
    out = np.zeros_like(padded, dtype=np.uint8)
    out[np.min(padded, axis=2) > a] = 255
    return unpad(out)


def _scribble_xdog(img, res, a, b, rng):
    padded, unpad = _resize_with_pad(img, res)
    fine = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    out = np.zeros_like(padded, dtype=np.uint8)
    out[2 * (255 - dog) > a] = 255
    return unpad(out)


def _noise_disk(h: int, w: int, f: int, rng: np.random.RandomState) -> np.ndarray:
    noise = rng.uniform(low=0, high=1, size=((h // f) + 2, (w // f) + 2, 1))
    noise = cv2.resize(noise, (w + 2 * f, h + 2 * f), interpolation=cv2.INTER_CUBIC)[f : f + h, f : f + w]
    noise -= np.min(noise)
    noise /= np.max(noise)
    return noise[:, :, None]


def _shuffle(img, res, a, b, rng):
    padded, unpad = _resize_with_pad(img, res)
    img = unpad(padded)
    h, w = img.shape[:2]
    x = _noise_disk(h, w, 256, rng) * float(w - 1)
    y = _noise_disk(h, w, 256, rng) * float(h - 1)
    return cv2.remap(img, np.concatenate([x, y], axis=2).astype(np.float32), None, cv2.INTER_LINEAR)


def _color_grid(img, res, a, b, rng):
    img = hwc3(img)
    h, w = img.shape[:2]
    if h < w:
        new_h, new_w = res, int(round(w / h * res))
    else:
        new_h, new_w = int(round(h / w * res)), res
    img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA)
    cells = cv2.resize(img, (new_w // 64, new_h // 64), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(cells, (new_w, new_h), interpolation=cv2.INTER_NEAREST)


def _tile_resample(img, res, a, b, rng):
    img = hwc3(img)
    if a < 1.1:
        return img
    h, w = int(img.shape[0] / a), int(img.shape[1] / a)
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def _recolor(conversion: int, channel: int) -> Detect:
    def detect(img, res, a, b, rng):
        value = cv2.cvtColor(hwc3(img), conversion)[:, :, channel].astype(np.float32) / 255.0
        return cv2.cvtColor((value**a * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    return detect


def _lineart_standard(img, res, a, b, rng):
    padded, unpad = _resize_with_pad(img, res)
    x = padded.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16, np.median(strong) if strong.size else 0)
    intensity *= 127
    return hwc3(unpad(intensity.clip(0, 255).astype(np.uint8)))


_GAMMA = Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001)

PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", _none, ("InstructP2P",), priority=10),
    Preprocessor("canny", _canny, ("Canny",), slider_1=Slider("Low Threshold", 100, 1, 255, 1),
                 slider_2=Slider("High Threshold", 200, 1, 255, 1), priority=100, soft_in_hires=True),
    Preprocessor("invert", _invert, ("Canny", "Lineart", "Scribble", "MLSD"),
                 label="invert (from white bg & black line)", priority=20, resolution_shown=False),
    Preprocessor("blur_gaussian", _blur_gaussian, ("Tile",), slider_1=Slider("Sigma", 9.0, 0.01, 64.0)),
    Preprocessor("threshold", _threshold, (), slider_1=Slider("Binarization Threshold", 127, 0, 255)),
    Preprocessor("scribble_xdog", _scribble_xdog, ("Scribble", "SparseCtrl"),
                 slider_1=Slider("XDoG Threshold", 32, 1, 64)),
    Preprocessor("shuffle", _shuffle, ("Shuffle",), resolution_shown=False),
    Preprocessor("t2ia_color_grid", _color_grid, ("T2I-Adapter",)),
    Preprocessor("tile_resample", _tile_resample, ("Tile",), slider_1=Slider("Down Sampling Rate", 1.0, 1.0, 8.0),
                 priority=100, resolution_shown=False),
    Preprocessor("recolor_luminance", _recolor(cv2.COLOR_BGR2LAB, 0), ("Recolor",), slider_1=_GAMMA, priority=100,
                 resolution_shown=False, post_process="recolor_luminance"),
    Preprocessor("recolor_intensity", _recolor(cv2.COLOR_BGR2HSV, 2), ("Recolor",), slider_1=_GAMMA,
                 resolution_shown=False, post_process="recolor_intensity"),
    Preprocessor("lineart_standard", _lineart_standard, ("Lineart",),
                 label="lineart_standard (from white bg & black line)", priority=100),
    Preprocessor("inpaint", _rgba, ("Inpaint",), label="inpaint_global_harmonious", resolution_shown=False,
                 takes_mask=True),
    Preprocessor("inpaint_only", _rgba, ("Inpaint",), priority=100, resolution_shown=False, takes_mask=True,
                 adjusts_output="inpaint_only", post_process="inpaint_only"),
    Preprocessor("tile_colorfix", _none, ("Tile",), slider_1=Slider("Variation", 8.0, 3.0, 32.0, 1.0),
                 resolution_shown=False, adjusts_output="colorfix"),
    Preprocessor("tile_colorfix+sharp", _none, ("Tile",), slider_1=Slider("Variation", 8.0, 3.0, 32.0, 1.0),
                 slider_2=Slider("Sharpness", 1.0, 0.0, 2.0), resolution_shown=False, adjusts_output="colorfix"),
)}

# Preprocessors of the extension that need annotator weights (the file each loads first), or that are not
# built here yet. A unit asking for one is refused by name.
NEEDS_WEIGHTS = {
    "depth_midas": "dpt_hybrid-midas-501f0c75.pt", "depth_leres": "res101.pth", "depth_zoe": "ZoeD_M12_N.pt",
    "depth_anything": "depth_anything_vitl14.pth", "openpose": "body_pose_model.pth",
    "openpose_full": "body_pose_model.pth, hand_pose_model.pth, facenet.pth", "dw_openpose_full": "dw-ll_ucoco_384.onnx",
    "lineart_realistic": "sk_model.pth", "lineart_coarse": "sk_model2.pth", "lineart_anime": "netG.pth",
    "softedge_hed": "ControlNetHED.pth", "softedge_pidinet": "table5_pidinet.pth", "mlsd": "mlsd_large_512_fp32.pth",
    "normal_bae": "scannet.pt", "seg_ofade20k": "250_16_swin_l_oneformer_ade20k_160k.pth",
    "scribble_hed": "ControlNetHED.pth", "scribble_pidinet": "table5_pidinet.pth",
    "mediapipe_face": "the mediapipe package", "reference_only": None, "reference_adain": None,
    "reference_adain+attn": None, "ip-adapter-auto": None, "inpaint_only+lama": "ControlNetLama.pth",
}


def find(name: str, field_name: str = "module") -> Preprocessor:
    """The preprocessor by name or label; a clear error for one that needs weights or is unknown."""
    for p in PREPROCESSORS.values():
        if name in (p.name, p.title):
            return p
    if name in NEEDS_WEIGHTS:
        need = NEEDS_WEIGHTS[name]
        why = f"needs annotator weights ({need}), which are not shipped and never downloaded here" if need else \
            "is not built in yet"
        raise InvalidRequest(field_name, f"preprocessor {name!r} {why}; available: {', '.join(PREPROCESSORS)}")
    raise InvalidRequest(field_name, f"unknown preprocessor {name[:80]!r}; available: {', '.join(PREPROCESSORS)}")


def sorted_preprocessors() -> list[Preprocessor]:
    """"none" first, then by priority and label, highest first (the extension's order)."""
    rest = [p for p in PREPROCESSORS.values() if p.name != "none"]
    return [PREPROCESSORS["none"]] + sorted(rest, key=lambda p: str(p.priority).zfill(8) + p.title, reverse=True)


def run(p: Preprocessor, image: np.ndarray, resolution: int, a: float, b: float, seed: int) -> np.ndarray:
    """The detected map (H, W, 3) uint8 (inpaint: (H, W, 4)); `seed` feeds the numpy random state (shuffle)
    as the extension's."""
    detected = p.detect(image, resolution, a, b, np.random.RandomState(seed & 0xFFFFFFFF))
    return detected if p.takes_mask else hwc3(detected)


def shown_map(p: Preprocessor, detected: np.ndarray) -> np.ndarray:
    """What the caller is shown of a map: inpaint maps with the mask as half transparency (the extension's)."""
    if not p.takes_mask or detected.ndim != 3 or detected.shape[2] != 4:
        return detected
    shown = np.clip(detected, 0, 255).astype(np.uint8)
    shown[:, :, 3] = 255 - shown[:, :, 3] // 2
    return shown
