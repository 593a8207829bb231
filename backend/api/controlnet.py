"""The sd-webui-controlnet extension's own routes (/controlnet/...), with its answers' shapes; generation
takes the units through `alwayson_scripts.controlnet` (translate.py)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from backend.api.images import decode_b64_image, encode_png
from backend.control import preprocess
from backend.errors import InvalidRequest
from backend.service import GenerationService

API_VERSION = 3


class DetectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = []
    controlnet_processor_res: float = -1
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = []
    low_vram: bool = False


class ControlNetApi:
    def __init__(self, service: GenerationService):
        self.service = service

    def add_routes(self, route) -> None:
        route("/version", self.version, ["GET"])
        route("/model_list", self.model_list, ["GET"])
        route("/module_list", self.module_list, ["GET"])
        route("/control_types", self.control_types, ["GET"])
        route("/settings", self.settings, ["GET"])
        route("/detect", self.detect, ["POST"], DetectBody)

    def version(self) -> dict:
        return {"version": API_VERSION}

    def model_list(self, query: dict) -> dict:
        return {"model_list": self.service.controlnet_models(refresh=_flag(query, "update", True))}

    def module_list(self, query: dict) -> dict:
        alias = _flag(query, "alias_names", False)
        ordered = preprocess.sorted_preprocessors()
        names = [p.title if alias else p.name for p in ordered]
        detail = {(p.title if alias else p.name): {"model_free": False, "sliders": p.sliders()} for p in ordered}
        unavailable = {name: f"needs {need}" if need else "not built in yet"
                       for name, need in preprocess.NEEDS_WEIGHTS.items()}
        return {"module_list": names, "module_detail": detail, "unavailable_modules": unavailable}

    def control_types(self) -> dict:
        models = self.service.controlnet_models()
        ordered = preprocess.sorted_preprocessors()
        tags = sorted({tag for p in ordered for tag in p.tags})
        types = {"All": {"module_list": [p.title for p in ordered], "model_list": models,
                         "default_option": "none", "default_model": "None"}}
        for tag in tags:
            modules = [p for p in ordered if tag in p.tags or p.name == "none"]
            matching = [m for m in models if m == "None" or tag.lower() in m.lower()]
            default = next((m for m in matching[1:] if "11" in m.split("[")[0]), matching[1] if len(matching) > 1
                           else "None")
            types[tag] = {"module_list": [p.title for p in modules], "model_list": matching,
                          "default_option": next((p.title for p in modules if p.name != "none"), "none"),
                          "default_model": default}
        return {"control_types": types}

    def settings(self) -> dict:
        return {"control_net_unit_count": self.service.controlnet_unit_count()}

    def detect(self, body: DetectBody) -> dict:
        pre = preprocess.find(body.controlnet_module, "controlnet_module")
        if not body.controlnet_input_images:
            raise InvalidRequest("controlnet_input_images", "No image selected")
        if pre.takes_mask and len(body.controlnet_masks) != len(body.controlnet_input_images):
            raise InvalidRequest("controlnet_masks", f"Preprocessor {pre.name} requires `controlnet_masks` param.")
        if body.controlnet_masks and not pre.takes_mask:
            raise InvalidRequest("controlnet_masks", f"preprocessor {pre.name} does not take a mask")
        limit = self.service.settings.limits.max_upload_pixels
        maps = []
        for i, text in enumerate(body.controlnet_input_images):
            image = decode_b64_image(text, f"controlnet_input_images[{i}]", limit)
            mask = decode_b64_image(body.controlnet_masks[i], f"controlnet_masks[{i}]", limit) \
                if pre.takes_mask else None
            maps.append(self.service.controlnet_detect(pre.name, image, body.controlnet_processor_res,
                                                       body.controlnet_threshold_a, body.controlnet_threshold_b, mask))
        return {"images": [encode_png(m, None) for m in maps], "info": "Success"}


def _flag(query: dict, name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() not in ("true", "false", "1", "0"):
        raise InvalidRequest(name, f"expected true or false, got {value[:20]!r}")
    return value.lower() in ("true", "1")
