"""Entry point: parse flags -> Settings, build the backend, the UI and (with --api) the REST API, then serve."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, whatever a library tries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no torchvision notices for image processors we never use

import flags  # noqa: E402
from backend.settings import Limits, MemoryFlags, Settings  # noqa: E402

log = logging.getLogger("app")


# the flags live in flags.py; these names stay importable from app for scripts and tests
parse_args, announce_compat_flags = flags.parse_args, flags.announce_compat_flags


def parse_prediction_overrides(items: list[str]) -> dict[str, str]:
    """['model.safetensors=v'] -> {'model.safetensors': 'v_prediction'}."""
    kinds = {"v": "v_prediction", "v_prediction": "v_prediction", "eps": "epsilon", "epsilon": "epsilon"}
    overrides = {}
    for item in items:
        name, _, kind = item.rpartition("=")
        if not name or kind not in kinds:
            raise SystemExit(f"--prediction-type expects NAME=v or NAME=epsilon, got '{item}'")
        overrides[name] = kinds[kind]
    return overrides


def embeddings_dirs(args: argparse.Namespace, models_dir: Path) -> tuple[Path, ...]:
    if args.embeddings_dir:
        return (args.embeddings_dir,)
    a1111_place = args.data_dir / "embeddings"
    return (models_dir / "embeddings",) + ((a1111_place,) if a1111_place.is_dir() else ())


def settings_from_args(args: argparse.Namespace) -> Settings:
    models_dir = args.models_dir or args.data_dir / "models"
    return Settings(
        embeddings_dirs=embeddings_dirs(args, models_dir),
        lora_dir=args.lora_dir,
        controlnet_dir=args.controlnet_dir,
        cluster_address=args.cluster_address,
        cluster_workers=max(1, args.workers),
        styles_file=args.styles_file or args.data_dir / "styles.csv",
        config_file=args.ui_settings_file or args.data_dir / "config.json",
        hypernetwork_dir=args.hypernetwork_dir,
        upscaler_dirs=(args.esrgan_models_path or models_dir / "ESRGAN",
                       args.realesrgan_models_path or models_dir / "RealESRGAN"),
        models_dir=models_dir,
        outputs_dir=args.outputs_dir or args.data_dir / "outputs",
        ckpt_dir=args.ckpt_dir,
        vae_dir=args.vae_dir,
        device=flags.device_choice(args),
        precision=flags.precision_choice(args),
        no_half_vae=args.no_half_vae,
        nan_check=not args.disable_nan_check,
        upcast_sampling=args.upcast_sampling,
        memory=MemoryFlags(xformers=args.xformers or args.force_enable_xformers or args.xformers_flash_attention,
                           attention_slicing=args.attention_slicing, medvram=args.medvram,
                           medvram_sdxl=args.medvram_sdxl, lowvram=args.lowvram, compile=args.compile),
        checkpoint_cache=args.checkpoint_cache,
        checkpoint_cache_gb=args.checkpoint_cache_gb,
        default_checkpoint=args.ckpt,
        prediction_overrides=parse_prediction_overrides(args.prediction_type),
        limits=Limits(max_width=args.max_size, max_height=args.max_size, max_upload_pixels=args.max_upload_pixels,
                      max_prompt_chunks=args.max_prompt_chunks),
        local_only=not (flags.is_exposed(args) or args.hide_ui_dir_config),
        max_queued_per_user=max(1, args.max_queued_per_user),
        private_outputs=len(account_names(args)) > 1 and not args.shared_outputs,
        data_dir=args.data_dir,
        freeze_all_settings=args.freeze_settings,
        frozen_settings=frozenset(n.strip() for n in (args.freeze_specific_settings or "").split(",") if n.strip()),
    )


def account_names(args: argparse.Namespace) -> set[str]:
    """Every account of the UI and the API (an unreadable --gradio-auth-path is reported when serving starts)."""
    try:
        ui = ui_credentials(args)
    except SystemExit:
        ui = parse_credentials(args.gradio_auth)
    return {user for user, _ in ui} | {user for user, _ in parse_credentials(args.api_auth)}


def parse_credentials(text: str | None) -> list[tuple[str, str]]:
    """'user:pass,user2:pass2' -> [(user, pass), ...]. Empty user names and passwords are refused."""
    if not text:
        return []
    pairs = []
    for item in text.replace("\n", ",").split(","):
        if not item.strip():
            continue
        user, sep, password = item.strip().partition(":")
        if not sep or not user:
            raise SystemExit(f"credentials must look like user:password, got '{item.strip()}'")
        if not password:
            raise SystemExit(f"the password of user '{user}' is empty: give every user a password")
        pairs.append((user, password))
    return pairs


def ui_credentials(args: argparse.Namespace) -> list[tuple[str, str]]:
    """--gradio-auth and the entries of --gradio-auth-path (one user:password per line or comma-separated)."""
    pairs = parse_credentials(args.gradio_auth)
    if args.gradio_auth_path:
        try:
            text = args.gradio_auth_path.read_text(encoding="utf-8")
        except OSError as err:
            raise SystemExit(f"--gradio-auth-path: cannot read the file ({err.strerror})") from None
        pairs += parse_credentials(text)
    return pairs


def check_exposure(args: argparse.Namespace) -> None:
    """Exposing the server beyond this machine needs credentials, unless the user explicitly opts out."""
    if not flags.is_exposed(args) or args.insecure_no_auth:
        return
    has_ui_login = bool(ui_credentials(args))
    if args.nowebui and (args.api_auth or has_ui_login):
        return
    if not has_ui_login:
        raise SystemExit("--listen/--share/--server-name exposes the server to other machines: add --gradio-auth "
                         "user:pass (or --insecure-no-auth to allow anyone)")


def api_credentials(args: argparse.Namespace) -> list[tuple[str, str]]:
    """--api-auth if given, else the UI's --gradio-auth: whoever may use the UI may use the API and its docs,
    and nobody else. Without either (local use only) the API is open, as in A1111."""
    return parse_credentials(args.api_auth) or ui_credentials(args)


def build_service(settings: Settings):
    """The backend as the app runs it (backend/wiring.py); imported late so that --help stays quick."""
    from backend.wiring import build_service as build

    return build(settings)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.loglevel or logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if not args.xformers:  # its "can't load C++/CUDA extensions" warning only matters to --xformers users
        logging.getLogger("xformers").setLevel(logging.ERROR)
    announce_compat_flags(args)
    check_exposure(args)
    api_auth = api_credentials(args)
    settings = settings_from_args(args)
    try:
        service = build_service(settings)
    except ValueError as err:  # a precision or device this machine cannot run
        log.error("%s", err)
        return 2
    if not service.registry.checkpoints:
        log.warning("No checkpoints found. Put .safetensors/.ckpt files or diffusers folders into %s",
                    settings.checkpoint_dir)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.nowebui:
        server = serve_api_only(args, service, api_auth)
        close = server.close
    else:
        close = serve_ui(args, service, ui_credentials(args), api_auth)
    while not stop.wait(0.5):
        pass
    log.info("Stopping: interrupting the running job, refusing the waiting ones")
    service.shutdown()
    time.sleep(SHUTDOWN_GRACE_S)  # lets the interrupted job's answer reach its client
    close()
    return 0


SHUTDOWN_GRACE_S = 1.0


def serve_ui(args: argparse.Namespace, service, ui_auth: list[tuple[str, str]], api_auth: list[tuple[str, str]]):
    """The web UI (and with --api the REST API in front of it); returns what closes them."""
    from backend.api.routes import MAX_BODY_BYTES  # one uploaded file through the UI: the API's body limit
    from ui.context import UiContext
    from ui.layout import CSS, JS, build_ui

    ui = UiContext(service)
    demo = build_ui(ui)
    demo.queue(default_concurrency_limit=16)
    launch = dict(server_name=flags.server_address(args), server_port=args.port or 7860,
                  auth=ui_auth or None, prevent_thread_lock=True, show_error=True, css=CSS, js=JS,
                  footer_links=[], ssl_keyfile=args.tls_keyfile, ssl_certfile=args.tls_certfile,
                  ssl_verify=args.disable_tls_verify is not False, root_path=args.subpath or None,
                  allowed_paths=[str(p) for p in args.gradio_allowed_path], max_file_size=MAX_BODY_BYTES)
    try:
        app, local_url, share_url = demo.launch(share=args.share, **launch)
    except Exception as err:  # noqa: BLE001 - a share link needs the internet; keep serving locally without it
        if not args.share:
            raise
        log.error("Could not create a share link (%s); serving locally only.", err)
        app, local_url, share_url = demo.launch(share=False, **launch)
    guard_gradio_routes(app, bool(ui_auth))
    if args.api:
        from backend.api.routes import mount_api

        mount_api(app, service, api_auth, api_options(args))
    log.info("Running on %s%s", local_url, f" and {share_url}" if share_url else "")

    def close():
        demo.close()
        ui.close()

    return close


def guard_gradio_routes(app, has_login: bool) -> None:
    """Gradio's own FastAPI schema and docs pages answer without its login; with a login they are removed
    (with --api, /docs and /openapi.json are the REST API's, behind its auth)."""
    if not has_login:
        return
    exposed = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in exposed]


def api_options(args: argparse.Namespace):
    from backend.api.routes import ApiOptions

    return ApiOptions(flags=flags.cmd_flags(args, args.data_dir), log_requests=args.api_log,
                      cors_origins=[o for o in (args.cors_allow_origins or "").split(",") if o],
                      cors_origin_regex=args.cors_allow_origins_regex)


def serve_api_only(args: argparse.Namespace, service, api_auth: list[tuple[str, str]]):
    """--nowebui: the REST API and its docs alone, as A1111 (port 7861 unless --port)."""
    import uvicorn
    from fastapi import FastAPI

    from backend.api.routes import mount_api

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    mount_api(app, service, api_auth, api_options(args))
    config = uvicorn.Config(app, host=flags.server_address(args), port=args.port or 7861, log_level="warning",
                            ssl_keyfile=args.tls_keyfile, ssl_certfile=args.tls_certfile, root_path=args.subpath or "")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # main() owns SIGINT/SIGTERM
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    log.info("API only (--nowebui) on http://%s:%d/sdapi/v1 (docs at /docs)", flags.server_address(args),
             args.port or 7861)

    class Running:
        @staticmethod
        def close():
            server.should_exit = True
            thread.join(timeout=5)

    return Running


if __name__ == "__main__":
    sys.exit(main())
