"""The A1111-compatible REST API (/sdapi/v1): a thin layer over the generation service and its one queue."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time

import psutil
import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.routing import Mount, Route

from backend import infotext
from backend.api.images import decode_b64_image, encode_png
from backend.api.models import Img2ImgBody, PngInfoBody, Txt2ImgBody
from backend.api.translate import ApiOptions, to_request, to_response
from backend.errors import BackendError, CheckpointError, InvalidRequest, ModelNotFound, OutOfMemory
from backend.generation.preview import latent_preview
from backend.outputs import read_infotext
from backend.samplers import SAMPLERS, SCHEDULES
from backend.service import GenerationService

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
MAX_BODY_BYTES = 64 * 1024 * 1024


def error_response(status: int, error: str, detail: str, field: str | None = None) -> JSONResponse:
    body = {"error": error, "detail": detail}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def _status_of(err: BackendError) -> int:
    if isinstance(err, InvalidRequest):
        return 422
    if isinstance(err, ModelNotFound):
        return 404
    if isinstance(err, CheckpointError):
        return 422
    if isinstance(err, OutOfMemory):
        return 503
    return 500


class SdApi:
    def __init__(self, service: GenerationService, credentials: list[tuple[str, str]]):
        self.service = service
        self.credentials = credentials
        self.options = ApiOptions()
        self.app = FastAPI(title="Stable Diffusion web UI API", version="1", docs_url=None, redoc_url=None)
        self._add_routes()

    # ---------------------------------------------------------------- plumbing

    def _authorized(self, request: Request) -> bool:
        if not self.credentials:
            return True
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return any(secrets.compare_digest(user, u) & secrets.compare_digest(password, p) for u, p in self.credentials)

    def _route(self, path: str, handler, methods: list[str], body_model: type[BaseModel] | None = None):
        async def endpoint(request: Request):
            if not self._authorized(request):
                response = error_response(401, "Unauthorized", "HTTP Basic credentials are required")
                response.headers["WWW-Authenticate"] = "Basic"
                return response
            try:
                body = await self._parse(request, body_model) if body_model else None
                args = (body,) if body_model else ()
                if "query" in handler.__code__.co_varnames[: handler.__code__.co_argcount]:
                    args += (dict(request.query_params),)
                return JSONResponse(await run_in_threadpool(handler, *args))
            except BackendError as err:
                return error_response(_status_of(err), type(err).__name__, str(err), getattr(err, "field", None))
            except Exception as err:  # noqa: BLE001 - one bad request must not take the server down
                log.exception("API %s failed", path)
                return error_response(500, type(err).__name__, str(err))

        self.app.add_api_route(path, endpoint, methods=methods, name=handler.__name__,
                               openapi_extra=_openapi_body(body_model))

    async def _parse(self, request: Request, model: type[BaseModel]):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise InvalidRequest("body", f"request is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise InvalidRequest("body", f"request is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB")
        try:
            data = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InvalidRequest("body", f"invalid JSON: {err}") from err
        if not isinstance(data, dict):
            raise InvalidRequest("body", "expected a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidRequest(field, first["msg"]) from err

    # ---------------------------------------------------------------- endpoints

    def _add_routes(self) -> None:
        r = self._route
        r("/txt2img", self.txt2img, ["POST"], Txt2ImgBody)
        r("/img2img", self.img2img, ["POST"], Img2ImgBody)
        r("/sd-models", self.sd_models, ["GET"])
        r("/sd-vae", self.sd_vae, ["GET"])
        r("/options", self.get_options, ["GET"])
        r("/options", self.set_options, ["POST"], _AnyBody)
        r("/samplers", self.samplers, ["GET"])
        r("/schedulers", self.schedulers, ["GET"])
        r("/progress", self.progress, ["GET"])
        r("/interrupt", self.interrupt, ["POST"])
        r("/skip", self.skip, ["POST"])
        r("/refresh-checkpoints", self.refresh_checkpoints, ["POST"])
        r("/refresh-vae", self.refresh_checkpoints, ["POST"])
        r("/png-info", self.png_info, ["POST"], PngInfoBody)
        r("/scripts", self.scripts, ["GET"])
        r("/memory", self.memory, ["GET"])

    def txt2img(self, body: Txt2ImgBody) -> dict:
        return self._generate(body)

    def img2img(self, body: Img2ImgBody) -> dict:
        return self._generate(body)

    def _generate(self, body: Txt2ImgBody) -> dict:
        req = to_request(body, self.options, self.service.settings.limits)
        result = self.service.generate(req)
        if body.override_settings and not body.override_settings_restore_afterwards:
            self.options.values.update(body.override_settings)
        return to_response(body, req, result, bool(self.options.values.get("return_grid", True)))

    def sd_models(self) -> list[dict]:
        return [{"title": c.title, "model_name": c.model_name, "hash": c.short_hash, "sha256": c.sha256,
                 "filename": str(c.path), "config": None} for c in self.service.registry.checkpoints]

    def sd_vae(self) -> list[dict]:
        return [{"model_name": v.model_name, "filename": str(v.path)} for v in self.service.registry.vaes]

    def get_options(self) -> dict:
        current = self.service.current_checkpoint()
        values = dict(self.options.values)
        chosen = values.get("sd_model_checkpoint")
        values["sd_model_checkpoint"] = current.title if current and not chosen else chosen
        return values

    def set_options(self, body: BaseModel) -> dict:
        updates = body.model_dump()
        if updates.get("sd_model_checkpoint"):
            checkpoint = self.service.registry.find_checkpoint(str(updates["sd_model_checkpoint"]))
            self.service.load_checkpoint(checkpoint.title).wait()
            updates["sd_model_checkpoint"] = checkpoint.title
        if updates.get("sd_vae") not in (None, "Automatic", "None"):
            self.service.registry.find_vae(str(updates["sd_vae"]))
        if "CLIP_stop_at_last_layers" in updates:
            value = updates["CLIP_stop_at_last_layers"]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
                raise InvalidRequest("CLIP_stop_at_last_layers", f"must be an integer 1..12, got {value!r}")
        self.options.values.update(updates)
        return {}

    def samplers(self) -> list[dict]:
        return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS]

    def schedulers(self) -> list[dict]:
        return [{"name": internal, "label": label, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for label, (internal, _) in SCHEDULES.items()]

    def progress(self, query: dict) -> dict:
        queue = self.service.queue
        job, pending = queue.current, queue.pending()
        skip_image = query.get("skip_current_image", "false").lower() == "true"
        state = {"skipped": False, "interrupted": False, "job": "", "job_count": len(pending) + (1 if job else 0),
                 "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        if job is None:
            return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}
        p = job.progress
        state.update(job=job.id, interrupted=job.interrupted, job_no=p.batch_no, sampling_step=p.step,
                     sampling_steps=p.steps)
        image = None
        family = self.service.models.loaded_family
        if not skip_image and p.latents is not None and family is not None:
            image = encode_png(latent_preview(p.latents[0], family), None)
        return {"progress": p.fraction, "eta_relative": p.eta_seconds() or 0, "state": state,
                "current_image": image, "textinfo": p.textinfo}

    def interrupt(self) -> dict:
        self.service.queue.interrupt()
        return {}

    def skip(self) -> dict:
        self.service.queue.skip()
        return {}

    def refresh_checkpoints(self) -> dict:
        self.service.registry.refresh()
        return {}

    def png_info(self, body: PngInfoBody) -> dict:
        image = decode_b64_image(body.image, "image", self.service.settings.limits.max_upload_pixels)
        text = read_infotext(image) or ""
        return {"info": text, "items": {"parameters": text} if text else {},
                "parameters": infotext.parse(text) if text else {}}

    def scripts(self) -> dict:
        return {"txt2img": [], "img2img": []}

    def memory(self) -> dict:
        vm = psutil.virtual_memory()
        ram = {"free": vm.available, "used": vm.total - vm.available, "total": vm.total}
        if not torch.cuda.is_available():
            return {"ram": ram, "cuda": {"error": "CUDA is not available"}}
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        cuda = {"system": {"free": free, "used": total - free, "total": total},
                "active": {"current": stats.get("active_bytes.all.current", 0),
                           "peak": stats.get("active_bytes.all.peak", 0)},
                "allocated": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}}
        return {"ram": ram, "cuda": cuda}


class _AnyBody(BaseModel):
    model_config = {"extra": "allow"}


def _openapi_body(model: type[BaseModel] | None) -> dict | None:
    if model is None:
        return None
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


def mount_api(app, service: GenerationService, credentials: list[tuple[str, str]]) -> SdApi:
    """Put the API in front of the (already running) Gradio app: /sdapi/v1/..., /docs and /openapi.json."""
    api = SdApi(service, credentials)
    openapi_url = "/openapi.json"

    async def openapi(_request):
        schema = api.app.openapi()
        schema["servers"] = [{"url": PREFIX}]
        return JSONResponse(schema)

    async def docs(_request):
        return get_swagger_ui_html(openapi_url=openapi_url, title="API docs")

    routes = [Mount(PREFIX, app=api.app), Route(openapi_url, openapi), Route("/docs", docs)]
    app.router.routes[0:0] = routes
    return api
