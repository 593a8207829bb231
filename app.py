"""Entry point: parse flags -> Settings, build the backend, the UI and (with --api) the REST API, then serve."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub, whatever a library tries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no torchvision notices for image processors we never use

from backend.settings import PROJECT_ROOT, Limits, MemoryFlags, Settings  # noqa: E402

log = logging.getLogger("app")


# A1111 flags whose purpose this project fulfils without them, or that do not apply here
NOTICE_FLAGS = {
    "--opt-sdp-attention": "PyTorch SDPA attention is already the default",
    "--opt-sdp-no-mem-attention": "PyTorch SDPA attention is already the default",
    "--skip-torch-cuda-test": "there is no CUDA test to skip: the device is chosen by --device",
    "--no-download-sd-model": "nothing is ever downloaded",
    "--enable-insecure-extension-access": "there are no extensions",
    "--autolaunch": "open the address printed at start in your browser",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Self-hosted Stable Diffusion web UI (A1111-compatible flags).")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 so other machines can connect")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--gradio-auth", default=None, help="user:pass[,user2:pass2] required to open the UI")
    p.add_argument("--api", action="store_true", help="serve the A1111-compatible REST API under /sdapi/v1")
    p.add_argument("--api-auth", default=None, help="user:pass[,user2:pass2] HTTP Basic auth for the API")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --listen/--share without --gradio-auth/--api-auth (anyone who reaches it can use it)")
    p.add_argument("--data-dir", type=Path, default=PROJECT_ROOT, help="root holding models/ and outputs/")
    p.add_argument("--models-dir", type=Path, default=None, help="models root (default DATA_DIR/models)")
    p.add_argument("--ckpt-dir", type=Path, default=None, help="checkpoints (default MODELS_DIR/Stable-diffusion)")
    p.add_argument("--vae-dir", type=Path, default=None, help="VAEs (default MODELS_DIR/VAE)")
    p.add_argument("--embeddings-dir", type=Path, default=None,
                   help="textual-inversion embeddings (default: MODELS_DIR/embeddings, and DATA_DIR/embeddings "
                        "where it exists, as A1111 keeps them)")
    p.add_argument("--lora-dir", type=Path, default=None, help="LoRA networks (default MODELS_DIR/Lora)")
    p.add_argument("--outputs-dir", type=Path, default=None, help="where images are saved (default DATA_DIR/outputs)")
    p.add_argument("--ckpt", default=None, help="checkpoint to load first (name or title)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu", "mps"], default="auto")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    p.add_argument("--no-half", action="store_true", help="run the whole model in fp32")
    p.add_argument("--no-half-vae", action="store_true", help="run the VAE in fp32")
    p.add_argument("--xformers", action="store_true", help="use xformers attention where its CUDA kernels work")
    p.add_argument("--attention-slicing", action="store_true",
                   help="compute attention in slices (saves memory; slower on top of SDPA/xformers)")
    p.add_argument("--medvram", action="store_true", help="model offload: one component on the GPU at a time")
    p.add_argument("--medvram-sdxl", action="store_true", help="--medvram for SDXL models only")
    p.add_argument("--lowvram", action="store_true", help="sequential offload: each layer on the GPU only while it runs")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (channels_last); slow first image")
    p.add_argument("--checkpoint-cache", type=int, default=1, metavar="N",
                   help="inactive checkpoints kept in RAM for fast switching back (default 1; 0 = none)")
    p.add_argument("--checkpoint-cache-gb", type=float, default=None, metavar="GB",
                   help="RAM budget for those cached checkpoints (default: a third of the RAM)")
    p.add_argument("--prediction-type", action="append", default=[], metavar="NAME=v|epsilon",
                   help="override what a checkpoint predicts (SD 2.x 768-v vs 512 look alike); repeatable")
    p.add_argument("--max-size", type=int, default=2048, help="largest width/height a request may ask for")
    p.add_argument("--max-upload-pixels", type=int, default=4096 * 4096, help="largest uploaded image, in pixels")
    p.add_argument("--hypernetwork-dir", type=Path, default=None, help="hypernetworks (default MODELS_DIR/hypernetworks)")
    p.add_argument("--esrgan-models-path", type=Path, default=None, help="ESRGAN models (default MODELS_DIR/ESRGAN)")
    p.add_argument("--realesrgan-models-path", type=Path, default=None,
                   help="Real-ESRGAN models (default MODELS_DIR/RealESRGAN)")
    compat = p.add_argument_group("A1111 flags that need nothing here (accepted, with a one-line notice)")
    for flag in NOTICE_FLAGS:
        compat.add_argument(flag, action="store_true", help=NOTICE_FLAGS[flag])
    compat.add_argument("--theme", choices=["light", "dark"], default=None, help="UI theme (open ?__theme=dark)")
    p.add_argument("--styles-file", type=Path, default=None, help="styles file (default DATA_DIR/styles.csv)")
    p.add_argument("--ui-settings-file", type=Path, default=None, help="settings file (default DATA_DIR/config.json)")
    p.add_argument("--disable-safe-unpickle", action="store_true",
                   help="refused: pickle checkpoints are always loaded with the restricted unpickler")
    p.add_argument("--max-prompt-chunks", type=int, default=75,
                   help="longest prompt, in 75-token chunks (default 75: far above any real prompt)")
    return p.parse_args(argv)


def announce_compat_flags(args: argparse.Namespace) -> None:
    """A one-line notice for each accepted A1111 flag that does nothing here; refuse the unsafe one."""
    if args.disable_safe_unpickle:
        raise SystemExit("--disable-safe-unpickle is refused: .ckpt/.pt files can run code when unpickled, so they "
                         "are always read with the restricted unpickler. Convert a refused file to .safetensors.")
    for flag, why in NOTICE_FLAGS.items():
        if getattr(args, flag.lstrip("-").replace("-", "_")):
            log.info("%s: accepted, no effect here (%s)", flag, why)
    if args.theme:
        log.info("--theme %s: open the UI with ?__theme=%s", args.theme, args.theme)


def cmd_flags(args: argparse.Namespace) -> dict:
    """The effective flags, as GET /sdapi/v1/cmd-flags returns them (paths as text, never credentials)."""
    hidden = {"gradio_auth", "api_auth"}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in hidden}


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
        styles_file=args.styles_file or args.data_dir / "styles.csv",
        config_file=args.ui_settings_file or args.data_dir / "config.json",
        hypernetwork_dir=args.hypernetwork_dir,
        upscaler_dirs=(args.esrgan_models_path or models_dir / "ESRGAN",
                       args.realesrgan_models_path or models_dir / "RealESRGAN"),
        models_dir=models_dir,
        outputs_dir=args.outputs_dir or args.data_dir / "outputs",
        ckpt_dir=args.ckpt_dir,
        vae_dir=args.vae_dir,
        device=args.device,
        precision="fp32" if args.no_half else args.precision,
        no_half_vae=args.no_half_vae,
        memory=MemoryFlags(xformers=args.xformers, attention_slicing=args.attention_slicing, medvram=args.medvram,
                           medvram_sdxl=args.medvram_sdxl, lowvram=args.lowvram, compile=args.compile),
        checkpoint_cache=args.checkpoint_cache,
        checkpoint_cache_gb=args.checkpoint_cache_gb,
        default_checkpoint=args.ckpt,
        prediction_overrides=parse_prediction_overrides(args.prediction_type),
        limits=Limits(max_width=args.max_size, max_height=args.max_size, max_upload_pixels=args.max_upload_pixels,
                      max_prompt_chunks=args.max_prompt_chunks),
    )


def parse_credentials(text: str | None) -> list[tuple[str, str]]:
    """'user:pass,user2:pass2' -> [(user, pass), ...]. Empty user names and passwords are refused."""
    if not text:
        return []
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user:
            raise SystemExit(f"credentials must look like user:password, got '{item.strip()}'")
        if not password:
            raise SystemExit(f"the password of user '{user}' is empty: give every user a password")
        pairs.append((user, password))
    return pairs


def check_exposure(args: argparse.Namespace) -> None:
    """Exposing the server beyond this machine needs credentials, unless the user explicitly opts out."""
    exposed = args.listen or args.share
    if not exposed or args.insecure_no_auth:
        return
    if not args.gradio_auth:
        raise SystemExit("--listen/--share exposes the UI to other machines: add --gradio-auth user:pass "
                         "(or --insecure-no-auth to allow anyone)")


def api_credentials(args: argparse.Namespace) -> list[tuple[str, str]]:
    """--api-auth if given, else the UI's --gradio-auth: whoever may use the UI may use the API and its docs,
    and nobody else. Without either (local use only) the API is open, as in A1111."""
    return parse_credentials(args.api_auth) or parse_credentials(args.gradio_auth)


def build_service(settings: Settings):
    from backend.memory import policy
    from backend.memory.facts import probe_device_facts
    from backend.model_manager import CacheLimits, ModelManager, Placement
    from backend.networks.hypernetworks import HypernetLibrary
    from backend.networks.library import NetworkLibrary
    from backend.options import Options
    from backend.outputs import OutputWriter
    from backend.styles import StyleLibrary
    from backend.upscale.models import UpscalerLibrary
    from backend.prompts.embeddings import EmbeddingLibrary
    from backend.registry import HashCache, ModelRegistry
    from backend.service import GenerationService

    def probe():
        return probe_device_facts(check_xformers=settings.memory.xformers)

    facts = probe()
    device = policy.choose_device(settings.device, facts)
    dtype = policy.choose_dtype(settings.precision, device, facts)
    vae_dtype = policy.choose_vae_dtype(dtype, settings.no_half_vae)
    log.info("device %s, precision %s, VAE precision %s", device, dtype, vae_dtype)
    placement = Placement(device, dtype, vae_dtype, settings.memory, probe)
    cache = CacheLimits(settings.checkpoint_cache, policy.cache_budget_bytes(facts, settings.checkpoint_cache_gb))
    registry = ModelRegistry(settings.checkpoint_dir, settings.vae_folder, HashCache(settings.hash_cache_file))
    models = ModelManager(registry, placement, cache, settings.prediction_overrides)
    embeddings = EmbeddingLibrary(settings.embedding_folders)
    networks = NetworkLibrary([settings.lora_folder])
    upscalers = UpscalerLibrary(list(settings.upscaler_folders))
    hypernetworks = HypernetLibrary([settings.hypernetwork_dir or settings.models_dir / "hypernetworks"])
    styles = StyleLibrary(settings.styles_file or settings.models_dir.parent / "styles.csv")
    options = Options(path=settings.config_file)
    return GenerationService(settings, models, OutputWriter(settings.outputs_dir), options=options,
                             embeddings=embeddings, networks=networks, upscalers=upscalers,
                             hypernetworks=hypernetworks, styles=styles)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    if not args.xformers:  # its "can't load C++/CUDA extensions" warning only matters to --xformers users
        logging.getLogger("xformers").setLevel(logging.ERROR)
    announce_compat_flags(args)
    check_exposure(args)
    auth = parse_credentials(args.gradio_auth) or None
    api_auth = api_credentials(args)
    settings = settings_from_args(args)
    service = build_service(settings)
    if not service.registry.checkpoints:
        log.warning("No checkpoints found. Put .safetensors/.ckpt files or diffusers folders into %s",
                    settings.checkpoint_dir)

    from ui.context import UiContext
    from ui.layout import CSS, JS, build_ui

    demo = build_ui(UiContext(service, local_only=not (args.listen or args.share)))
    demo.queue(default_concurrency_limit=16)
    launch = dict(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, auth=auth,
                  prevent_thread_lock=True, show_error=True, css=CSS, js=JS, footer_links=[])
    try:
        app, local_url, share_url = demo.launch(share=args.share, **launch)
    except Exception as err:  # noqa: BLE001 - a share link needs the internet; keep serving locally without it
        if not args.share:
            raise
        log.error("Could not create a share link (%s); serving locally only.", err)
        app, local_url, share_url = demo.launch(share=False, **launch)
    if args.api:
        from backend.api.routes import mount_api

        mount_api(app, service, api_auth, cmd_flags(args))
    log.info("Running on %s%s", local_url, f" and {share_url}" if share_url else "")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.shutdown()
        demo.close()


if __name__ == "__main__":
    sys.exit(main())
