"""The A1111-compatible REST API (/sdapi/v1): a thin layer over the generation service and its one queue."""

from __future__ import annotations

import asyncio
import base64
import html
import binascii
import json
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import psutil
import torch
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.routing import Mount, Route

from backend import infotext
from backend.api import docs_page
from backend.api.controlnet import ControlNetApi
from backend.json_depth import MAX_DEPTH, nesting_depth
from backend.api.infotext_request import apply_infotext
from backend.api.images import decode_b64_image, encode_png
from backend.api.models import (ExtrasBatchBody, ExtrasBody, ExtrasSingleBody, Img2ImgBody, PngInfoBody,
                                Txt2ImgBody)
from backend.api.translate import to_request, to_response
from backend.errors import (BackendError, CheckpointError, Forbidden, Interrupted, InvalidRequest, ModelNotFound,
                            TooManyJobs, WorkerLost,
                            OutOfMemory, ServiceStopping)
from backend.generation import hires
from backend.jobs import Job
from backend.options import IMPLEMENTED, docs_text
from backend.outputs import read_infotext
from backend.samplers import SAMPLERS, SCHEDULES
from backend.generation.parameters import VERSION
from backend.service import GenerationService
from backend.upscale.extras import ExtrasRequest
from backend.upscale.resize import IMAGE_UPSCALERS

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"
BUILTIN_EXTENSIONS = ("Lora",)  # A1111's built-in extensions whose feature this project has
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = MAX_DEPTH


@dataclass
class Deferred:
    """A handler's answer that needs a queued job first: the route awaits `job` without holding a server
    thread (so /progress, /interrupt and /skip stay responsive however many requests wait), then calls
    `finish` (in a thread) to build the response."""

    job: Job
    finish: Callable[[Any], Any]


async def wait_for_job(job: Job) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def wake():
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    job.add_done_callback(wake)
    await done


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
    if isinstance(err, (OutOfMemory, ServiceStopping, WorkerLost)):
        return 503
    if isinstance(err, Forbidden):
        return 403
    if isinstance(err, Interrupted):
        return 409  # interrupted before it made anything
    if isinstance(err, TooManyJobs):
        return 429
    return 500


@dataclass
class ApiOptions:
    """What the command line says about the API: /cmd-flags' answer, --api-log, --cors-allow-origins(-regex)."""

    flags: dict = field(default_factory=dict)
    log_requests: bool = False
    cors_origins: list[str] = field(default_factory=list)
    cors_origin_regex: str | None = None


class SdApi:
    def __init__(self, service: GenerationService, credentials: list[tuple[str, str]],
                 options: ApiOptions | None = None):
        self.service = service
        self.options = options or ApiOptions()
        self.flags = self.options.flags
        self.credentials = [(u.encode("utf-8"), p.encode("utf-8")) for u, p in credentials]
        # no schema or docs of its own: /openapi.json and /docs (mount_api) serve them behind the same auth
        self.app = FastAPI(title="Stable Diffusion web UI API", version="1", docs_url=None, redoc_url=None,
                           openapi_url=None)
        # the sd-webui-controlnet extension's routes (/controlnet/...), under the same auth
        self.controlnet_app = FastAPI(title="ControlNet", docs_url=None, redoc_url=None, openapi_url=None)
        if self.options.cors_origins or self.options.cors_origin_regex:
            for app in (self.app, self.controlnet_app):
                app.add_middleware(CORSMiddleware, allow_origins=self.options.cors_origins,
                                   allow_origin_regex=self.options.cors_origin_regex, allow_methods=["*"],
                                   allow_headers=["*"], allow_credentials=True)
        self._add_routes()
        ControlNetApi(service).add_routes(lambda *a, **kw: self._route(*a, **kw, app=self.controlnet_app))

    # ---------------------------------------------------------------- plumbing

    def authorized(self, request: Request) -> bool:
        return self.caller(request) is not None

    def caller(self, request: Request) -> str | None:
        """Who asks: the account (HTTP Basic against the configured users; bytes are compared, so any header,
        non-ASCII included, gets a plain answer, in constant time), or without accounts the client's address.
        None: not allowed."""
        if not self.credentials:
            return f"client {request.client.host if request.client else 'unknown'}"
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (ValueError, binascii.Error):
            return None
        matches = [secrets.compare_digest(user, u) & secrets.compare_digest(password, p) for u, p in self.credentials]
        return user.decode("utf-8", "replace") if any(matches) else None

    def _route(self, path: str, handler, methods: list[str], body_model: type[BaseModel] | None = None,
               inline: bool = False, description: str | None = None, app: FastAPI | None = None):
        """`inline` handlers are quick and never block (progress, interrupt, skip): they run on the event loop
        itself, so no number of waiting requests can starve them of a thread."""
        async def endpoint(request: Request):
            started = time.monotonic()
            response = await answer(request)
            if self.options.log_requests:
                log.info("API %s %s -> %d (%.2f s)", request.method, request.url.path, response.status_code,
                         time.monotonic() - started)
            return response

        async def answer(request: Request):
            caller = self.caller(request)
            if caller is None:
                return unauthorized()
            try:
                body = await self._parse(request, body_model) if body_model else None
                args = (body,) if body_model else ()
                names = handler.__code__.co_varnames[: handler.__code__.co_argcount]
                if "query" in names:
                    args += (dict(request.query_params),)
                if "caller" in names:  # jobs belong to who submitted them
                    args += (caller,)
                answer = handler(*args) if inline else await run_in_threadpool(handler, *args)
                if isinstance(answer, Deferred):
                    await wait_for_job(answer.job)
                    answer = await run_in_threadpool(answer.finish, answer.job)
                return JSONResponse(answer)
            except BackendError as err:
                return error_response(_status_of(err), type(err).__name__, str(err), getattr(err, "field", None))
            except Exception as err:  # noqa: BLE001 - one bad request must not take the server down
                log.exception("API %s failed", path)
                return error_response(500, type(err).__name__, "internal error; the server log has the details")

        (app or self.app).add_api_route(path, endpoint, methods=methods, name=handler.__name__,
                                        description=description, openapi_extra=_openapi_body(body_model))

    async def _parse(self, request: Request, model: type[BaseModel]):
        raw = await read_body(request)
        data = parse_json(raw)
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
        r("/options", self.get_options, ["GET"], inline=True, description=docs_text())
        r("/options", self.set_options, ["POST"], _AnyBody, description=docs_text())
        r("/samplers", self.samplers, ["GET"])
        r("/schedulers", self.schedulers, ["GET"])
        r("/progress", self.progress, ["GET"], inline=True)
        r("/interrupt", self.interrupt, ["POST"], inline=True)
        r("/skip", self.skip, ["POST"], inline=True)
        r("/refresh-checkpoints", self.refresh_checkpoints, ["POST"])
        r("/refresh-vae", self.refresh_checkpoints, ["POST"])
        r("/png-info", self.png_info, ["POST"], PngInfoBody)
        r("/scripts", self.scripts, ["GET"])
        r("/script-info", self.script_info, ["GET"])
        r("/embeddings", self.embeddings, ["GET"])
        r("/loras", self.loras, ["GET"])
        r("/hypernetworks", self.hypernetworks, ["GET"])
        r("/upscalers", self.upscalers, ["GET"])
        r("/realesrgan-models", self.realesrgan_models, ["GET"])
        r("/face-restorers", self.face_restorers, ["GET"])
        r("/extra-single-image", self.extra_single_image, ["POST"], ExtrasSingleBody)
        r("/extra-batch-images", self.extra_batch_images, ["POST"], ExtrasBatchBody)
        r("/latent-upscale-modes", self.latent_upscale_modes, ["GET"])
        r("/refresh-loras", self.refresh_loras, ["POST"])
        r("/refresh-embeddings", self.refresh_embeddings, ["POST"])
        r("/memory", self.memory, ["GET"])
        r("/cluster", self.cluster, ["GET"])
        r("/cmd-flags", self.cmd_flags, ["GET"])
        r("/prompt-styles", self.prompt_styles, ["GET"])
        r("/extensions", self.extensions, ["GET"])

    def txt2img(self, body: Txt2ImgBody, caller: str) -> dict:
        return self._generate(body, caller)

    def img2img(self, body: Img2ImgBody, caller: str) -> dict:
        return self._generate(body, caller)

    def _generate(self, body: Txt2ImgBody, caller: str) -> Deferred:
        """A1111's override_settings apply to this request only, unless override_settings_restore_afterwards
        is false: then they stay, as if POSTed to /options (the model switch included)."""
        body, infotext_overrides, unused = self._with_infotext(body)
        overrides, unknown = self.service.options.check({**infotext_overrides, **(body.override_settings or {})})
        req, warnings = to_request(body, self.service.get_options(), overrides, self.service.settings.limits,
                                   self.service.script)
        if unused:
            warnings.append(f"infotext keys that set nothing here: {', '.join(k[:60] for k in unused)}")
        if unknown:
            warnings.append(f"override_settings ignored (unknown to A1111): {', '.join(unknown)}")
        inactive = sorted(k for k in overrides if k not in IMPLEMENTED)
        if inactive:  # options that do not change images (saving, UI); those that would are refused by check()
            warnings.append(f"override_settings with no effect on this request: {', '.join(inactive)}")
        job = self.service.submit(req, caller)

        def finish(job: Job) -> dict:
            result = job.wait(0)
            if overrides and not body.override_settings_restore_afterwards:
                self.service.set_options(overrides)
            result.warnings[:0] = warnings
            return to_response(body, req, result, bool(self.service.options.get("return_grid")),
                               self.service.image_format())

        return Deferred(job, finish)

    def _with_infotext(self, body: Txt2ImgBody) -> tuple[Txt2ImgBody, dict, list[str]]:
        """A1111 1.10: a request's `infotext` fills the fields it does not set itself, and its option keys join
        override_settings (the request's own override_settings win)."""
        text = (body.model_extra or {}).get("infotext")
        if not text:
            return body, {}, []
        given = set(body.model_fields_set) | set(body.model_extra or {})
        fields, overrides, unused = apply_infotext(given, text, isinstance(body, Img2ImgBody),
                                                   self.service.options.defaults)
        return body.model_copy(update=fields), overrides, unused

    def sd_models(self) -> list[dict]:
        return [{"title": c.title, "model_name": c.model_name, "hash": c.short_hash, "sha256": c.sha256,
                 "filename": self._public(c.path), "config": None} for c in self.service.checkpoints()]

    def sd_vae(self) -> list[dict]:
        return [{"model_name": v.model_name, "filename": self._public(v.path)} for v in self.service.vaes()]

    def get_options(self) -> dict:
        return self.service.get_options()

    def set_options(self, body: BaseModel) -> dict:
        return self.service.set_options(body.model_dump())

    def samplers(self) -> list[dict]:
        return [{"name": s.name, "aliases": list(s.aliases), "options": s.a1111_options()} for s in SAMPLERS]

    def schedulers(self) -> list[dict]:
        return [{"name": internal, "label": label, "aliases": None,
                 "default_rho": 7.0 if internal == "karras" else -1,
                 "need_inner_model": internal in ("uniform", "sgm_uniform")}
                for label, internal in SCHEDULES.items()]

    def progress(self, query: dict, caller: str) -> dict:
        """The caller's own job (running or waiting), with how many jobs are ahead of it (`queue_position`, a
        field A1111 clients ignore); another caller's job is never shown."""
        status = self.service.status(caller)
        job = status.current
        skip_image = query.get("skip_current_image", "false").lower() == "true"
        state = {"skipped": False, "interrupted": False, "job": "",
                 "job_count": status.waiting + (1 if job else 0), "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
                 "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        if job is None:
            return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None,
                    "queue_position": 0}
        p = job.progress
        state.update(job=job.id, interrupted=job.interrupted, job_no=p.batch_no, sampling_step=p.step,
                     sampling_steps=p.steps)
        preview = None if skip_image else self.service.preview(job)
        return {"progress": p.fraction, "eta_relative": p.eta_seconds() or 0, "state": state,
                "current_image": encode_png(preview, None, self.service.image_format()) if preview else None,
                "textinfo": p.textinfo, "queue_position": status.ahead}

    def interrupt(self, caller: str) -> dict:
        """The caller's running job only."""
        self.service.interrupt(owner=caller)
        return {}

    def skip(self, caller: str) -> dict:
        self.service.skip(owner=caller)
        return {}

    def refresh_checkpoints(self) -> dict:
        self.service.refresh_models()
        return {}

    def png_info(self, body: PngInfoBody) -> dict:
        image = decode_b64_image(body.image, "image", self.service.settings.limits.max_upload_pixels)
        text = read_infotext(image) or ""
        return {"info": text, "items": {"parameters": text} if text else {},
                "parameters": infotext.parse(text) if text else {}}

    def embeddings(self) -> dict:
        loaded, skipped = self.service.embedding_lists()
        return {"loaded": {n: _embedding_item(e) for n, e in loaded.items()},
                "skipped": {n: _embedding_item(e) for n, e in skipped.items()}}

    def upscalers(self) -> list[dict]:
        """A1111's shape: None, Lanczos, Nearest first, then the model upscalers by lower-case name."""
        builtin = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
                   for name in IMAGE_UPSCALERS]
        return builtin + [{"name": f.name, "model_name": f.path.stem, "model_path": self._public(f.path), "model_url": None,
                           "scale": f.scale} for f in self.service.upscaler_files()]

    def realesrgan_models(self) -> list[dict]:
        return [{"name": f.name, "path": self._public(f.path), "scale": f.scale} for f in self.service.upscaler_files()
                if f.name.startswith("R-ESRGAN")]

    def face_restorers(self) -> list[dict]:
        return []  # GFPGAN and CodeFormer need weights that cannot be downloaded here

    def extra_single_image(self, body: ExtrasSingleBody, caller: str) -> dict:
        image = decode_b64_image(body.image, "image", self.service.settings.limits.max_upload_pixels)
        result = self.service.extras([image], _extras_request(body), owner=caller)
        return {"html_info": _html_info(result.infotexts[0]),
                "image": encode_png(result.images[0], None, self.service.image_format())
                if body.show_extras_results else None}

    def extra_batch_images(self, body: ExtrasBatchBody, caller: str) -> dict:
        limit = self.service.settings.limits.max_upload_pixels
        images = [decode_b64_image(item.data, f"imageList.{i}.data", limit) for i, item in enumerate(body.imageList)]
        if not images:
            raise InvalidRequest("imageList", "at least one image is required")
        result = self.service.extras(images, _extras_request(body), owner=caller)
        return {"html_info": _html_info(result.infotexts[0]),
                "images": [encode_png(i, None, self.service.image_format()) for i in result.images]
                if body.show_extras_results else []}

    def latent_upscale_modes(self) -> list[dict]:
        return [{"name": name} for name in hires.LATENT_MODES]

    def loras(self) -> list[dict]:
        return [{"name": n.name, "alias": n.alias, "path": self._public(n.path), "metadata": n.metadata}
                for n in self.service.loras()]

    def hypernetworks(self) -> list[dict]:
        files = sorted(self.service.hypernetwork_files().items())
        return [{"name": name, "path": self._public(path)} for name, path in files]

    def refresh_loras(self) -> dict:
        self.service.refresh_loras()
        return {}

    def refresh_embeddings(self) -> dict:
        self.service.refresh_embeddings()
        return {}

    def scripts(self) -> dict:
        return self.service.script_names()

    def script_info(self) -> list[dict]:
        return self.service.script_info()

    def prompt_styles(self) -> list[dict]:
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                for s in self.service.prompt_styles()]

    def cmd_flags(self) -> dict:
        return self.flags

    def extensions(self) -> list[dict]:
        """A1111's shape. The features its built-in extensions bring that exist here are built in; clients
        check this list (e.g. for "Lora") before using them."""
        return [{"name": name, "remote": None, "branch": None, "commit_hash": None, "version": VERSION,
                 "commit_date": None, "enabled": True, "is_builtin": True} for name in BUILTIN_EXTENSIONS]

    def _public(self, path) -> str:
        return self.service.settings.public_path(path)

    def cluster(self) -> dict:
        """Our own: the cluster's workers (`--cluster-address`), empty when jobs run in this process."""
        return {"workers": self.service.cluster_status()}

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


def _extras_request(body: ExtrasBody) -> ExtrasRequest:
    return ExtrasRequest(resize_mode=body.resize_mode, upscaling_resize=body.upscaling_resize,
                         upscaling_resize_w=body.upscaling_resize_w, upscaling_resize_h=body.upscaling_resize_h,
                         upscaling_crop=body.upscaling_crop, upscaler_1=body.upscaler_1, upscaler_2=body.upscaler_2,
                         upscaler_2_visibility=body.extras_upscaler_2_visibility,
                         face_restoration=max(body.gfpgan_visibility, body.codeformer_visibility))


def _html_info(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _embedding_item(e) -> dict:
    return {"step": e.step, "sd_checkpoint": e.checkpoint, "sd_checkpoint_name": e.checkpoint_name,
            "shape": e.width, "vectors": e.count}


async def read_body(request: Request) -> bytes:
    """The body, read as it streams in and refused as soon as it passes MAX_BODY_BYTES, whether or not a
    Content-Length header announced it (a chunked body has none)."""
    too_large = InvalidRequest("body", f"request is larger than {MAX_BODY_BYTES // (1024 * 1024)} MB")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def parse_json(raw: bytes) -> dict:
    """The body as a JSON object. Refused with a 4xx: invalid JSON, NaN/Infinity (not JSON, and unanswerable in
    a JSON response), nesting deeper than MAX_JSON_DEPTH, and text that is not valid Unicode (lone surrogates)."""
    if nesting_depth(raw) > MAX_JSON_DEPTH:
        raise InvalidRequest("body", f"JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        data = json.loads(raw or b"{}", parse_constant=_refuse_constant, parse_float=_finite_float)
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidRequest("body", "contains text that is not valid Unicode (a lone surrogate such as \\ud800)") \
            from err
    except ValueError as err:  # malformed JSON, bad UTF-8, an integer of thousands of digits
        raise InvalidRequest("body", f"invalid JSON: {str(err)[:200]}") from err
    except RecursionError as err:
        raise InvalidRequest("body", "JSON is nested too deeply") from err
    if not isinstance(data, dict):
        raise InvalidRequest("body", "expected a JSON object")
    return data


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest("body", f"{text[:40]} is too large for a number")
    return value


def _refuse_constant(name: str):
    raise InvalidRequest("body", f"{name} is not a valid JSON number")


def unauthorized() -> JSONResponse:
    response = error_response(401, "Unauthorized", "HTTP Basic credentials are required")
    response.headers["WWW-Authenticate"] = "Basic"
    return response


class _AnyBody(BaseModel):
    model_config = {"extra": "allow"}


def _openapi_body(model: type[BaseModel] | None) -> dict | None:
    if model is None:
        return None
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


def mount_api(app, service: GenerationService, credentials: list[tuple[str, str]],
              options: ApiOptions | None = None) -> SdApi:
    """Put the API in front of the (already running) app: /sdapi/v1/..., and its schema and docs (/openapi.json,
    /docs with Swagger UI, /redoc), all behind the API's auth; the docs' scripts are served from local files."""
    api = SdApi(service, credentials, options)

    def guarded(handler):
        async def endpoint(request):
            if not api.authorized(request):
                return unauthorized()
            return await handler(request)
        return endpoint

    async def openapi(request):
        schema = api.app.openapi()
        schema["servers"] = [{"url": PREFIX}]
        return JSONResponse(schema)

    async def swagger(request):
        return HTMLResponse(docs_page.swagger_html(_root(request)))

    async def redoc(request):
        return HTMLResponse(docs_page.redoc_html(_root(request)))

    async def asset(request):
        found = docs_page.asset(request.path_params["name"])
        if found is None:
            return error_response(404, "NotFound", "no such file")
        return FileResponse(found)

    routes = [Mount(PREFIX, app=api.app), Mount("/controlnet", app=api.controlnet_app),
              Route("/openapi.json", guarded(openapi)),
              Route("/docs", guarded(swagger)), Route("/redoc", guarded(redoc)),
              Route(docs_page.ASSETS + "/{name}", guarded(asset))]
    app.router.routes[0:0] = routes
    return api


def _root(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")
