"""Command-line flags: this project's own, and every flag of A1111 1.10's `modules/cmd_args.py`, so that an
A1111 command line starts this server unchanged. A1111 flags are implemented where they mean something here;
the others are accepted with a one-line notice saying why they change nothing (or refused with a reason)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from backend.settings import PROJECT_ROOT, public_path

log = logging.getLogger("app")

# A1111 switches (no value) that change nothing here, and why.
NOTICE_FLAGS = {
    "-f": "running as root needs no switch here",
    "--opt-sdp-attention": "PyTorch SDPA attention is already the default",
    "--opt-sdp-no-mem-attention": "PyTorch SDPA attention is already the default",
    "--opt-split-attention": "the memory policy chooses the attention (SDPA, xformers or slicing)",
    "--opt-split-attention-v1": "the memory policy chooses the attention (SDPA, xformers or slicing)",
    "--opt-split-attention-invokeai": "the memory policy chooses the attention (SDPA, xformers or slicing)",
    "--opt-sub-quad-attention": "the memory policy chooses the attention (SDPA, xformers or slicing)",
    "--disable-opt-split-attention": "the memory policy chooses the attention (SDPA, xformers or slicing)",
    "--opt-channelslast": "channels_last is used where it helps (with --compile)",
    "--skip-torch-cuda-test": "there is no CUDA test to skip: the device is chosen by --device",
    "--skip-python-version-check": "there is no Python version check",
    "--skip-version-check": "there is no torch/xformers version check",
    "--skip-install": "webui.sh installs from requirements.txt only when they change",
    "--skip-prepare-environment": "webui.sh installs from requirements.txt only when they change",
    "--reinstall-xformers": "xformers is pinned in requirements.txt",
    "--reinstall-torch": "torch is pinned in requirements.txt",
    "--update-check": "nothing is ever downloaded",
    "--update-all-extensions": "there are no extensions",
    "--no-download-sd-model": "nothing is ever downloaded",
    "--do-not-download-clip": "nothing is ever downloaded",
    "--enable-insecure-extension-access": "there are no extensions",
    "--disable-all-extensions": "there are no extensions",
    "--disable-extra-extensions": "there are no extensions",
    "--allow-code": "there is no custom-code script",
    "--autolaunch": "open the address printed at start in your browser",
    "--no-tests": "there are no start-up tests",
    "--test-server": "the test suite starts its own servers",
    "--log-startup": "start-up is logged at INFO already",
    "--dump-sysinfo": "there is no sysinfo dump",
    "--no-progressbar-hiding": "progress bars are shown",
    "--always-batch-cond-uncond": "does nothing in A1111 1.10 either",
    "--unload-gfpgan": "does nothing in A1111 1.10 either",
    "--deepdanbooru": "does nothing in A1111 1.10 either",
    "--show-negative-prompt": "does nothing in A1111 1.10 either",
    "--gradio-queue": "does nothing in A1111 1.10 either",
    "--no-gradio-queue": "generation always runs on the one worker queue",
    "--add-stop-route": "does nothing in A1111 1.10 either",
    "--administrator": "there is nothing that needs administrator rights",
    "--gradio-debug": "errors are logged with their traceback",
    "--use-textbox-seed": "the seed box already takes any seed",
    "--disable-console-progressbars": "there are no console progress bars",
    "--enable-console-prompts": "prompts are not printed to the console",
    "--ui-debug-mode": "models are loaded on first use, so start-up is already quick",
    "--skip-load-model-at-start": "models are loaded on first use",
    "--lowram": "checkpoints are read one tensor at a time straight onto their device",
    "--disable-model-loading-ram-optimization": "checkpoints are read one tensor at a time straight onto their device",
    "--unix-filenames-sanitization": "images are saved as NNNNN-SEED.png",
    "--no-prompt-history": "no params.txt is written",
    "--no-hashing": "hashes are computed in the background and cached, so they never slow loading",
    "--api-server-stop": "stop the server with Ctrl+C or SIGTERM",
    "--use-ipex": "Intel XPUs are not supported; the server runs on CUDA, MPS or the CPU",
}

# A1111 flags taking a value that changes nothing here, and why.
NOTICE_VALUE_FLAGS = {
    "--config": "the architecture is read from the checkpoint's tensors",
    "--gfpgan-dir": "face restoration needs weights that cannot be downloaded here",
    "--gfpgan-model": "face restoration needs weights that cannot be downloaded here",
    "--gfpgan-models-path": "face restoration needs weights that cannot be downloaded here",
    "--codeformer-models-path": "face restoration needs weights that cannot be downloaded here",
    "--bsrgan-models-path": "BSRGAN upscalers are not supported (ESRGAN, Real-ESRGAN and SRVGG are)",
    "--dat-models-path": "DAT upscalers are not supported (ESRGAN, Real-ESRGAN and SRVGG are)",
    "--clip-models-path": "there is no CLIP interrogator",
    "--textual-inversion-templates-dir": "there is no embedding training",
    "--localizations-dir": "the UI is in English only",
    "--ui-config-file": "the UI's defaults come from the settings (config.json)",
    "--tests": "there are no start-up tests",
    "--max-batch-count": "does nothing in A1111 1.10 either",
    "--gradio-img2img-tool": "does nothing in A1111 1.10 either",
    "--gradio-inpaint-tool": "does nothing in A1111 1.10 either",
    "--sub-quad-q-chunk-size": "there is no sub-quadratic attention; the memory policy chooses",
    "--sub-quad-kv-chunk-size": "there is no sub-quadratic attention; the memory policy chooses",
    "--sub-quad-chunk-threshold": "there is no sub-quadratic attention; the memory policy chooses",
    "--ngrok": "ngrok is not built in; use --share (with --gradio-auth) or your own tunnel",
    "--ngrok-region": "ngrok is not built in",
    "--ngrok-options": "ngrok is not built in",
    "--timeout-keep-alive": "the server keeps Gradio's own keep-alive",
    "--filenames-max-length": "images are saved as NNNNN-SEED.png, far below any limit",
    "--freeze-settings-in-sections": "settings have no sections here; use --freeze-settings or "
                                     "--freeze-specific-settings",
    "--vae-path": "pick the VAE with the SD VAE setting (sd_vae) or a <name>.vae.safetensors sidecar",
}

PRECISIONS = ["auto", "fp32", "fp16", "bf16", "full", "half", "autocast"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Self-hosted Stable Diffusion web UI (A1111-compatible flags).")
    _add_serving(p)
    _add_folders(p)
    _add_device(p)
    _add_limits(p)
    compat = p.add_argument_group("A1111 flags that need nothing here (accepted, with a one-line notice)")
    for flag, why in NOTICE_FLAGS.items():
        compat.add_argument(flag, action="store_true", help=why)
    for flag, why in NOTICE_VALUE_FLAGS.items():
        compat.add_argument(flag, default=None, metavar="VALUE", help=why)
    compat.add_argument("--theme", choices=["light", "dark"], default=None, help="UI theme (open ?__theme=dark)")
    p.add_argument("--disable-safe-unpickle", action="store_true",
                   help="refused: pickle checkpoints are always loaded with the restricted unpickler")
    return p.parse_args(argv)


def _add_serving(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=None, help="port to serve on (default 7860; 7861 with --nowebui)")
    p.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 so other machines can connect")
    p.add_argument("--server-name", default=None, help="address to listen on (a name other than loopback "
                                                      "exposes the server, like --listen)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--subpath", default=None, help="the path prefix a reverse proxy serves the UI under")
    p.add_argument("--tls-keyfile", default=None, help="TLS private key (with --tls-certfile): serve HTTPS")
    p.add_argument("--tls-certfile", default=None, help="TLS certificate (with --tls-keyfile)")
    p.add_argument("--disable-tls-verify", action="store_false", default=None,
                   help="accept a self-signed certificate for the local connection")
    p.add_argument("--gradio-auth", default=None, help="user:pass[,user2:pass2] required to open the UI")
    p.add_argument("--gradio-auth-path", type=Path, default=None,
                   help="file of user:pass entries (one per line or comma-separated), added to --gradio-auth")
    p.add_argument("--gradio-allowed-path", action="append", default=[], type=Path,
                   help="a folder whose files the UI may serve to logged-in users (repeatable)")
    p.add_argument("--api", action="store_true", help="serve the A1111-compatible REST API under /sdapi/v1")
    p.add_argument("--nowebui", action="store_true", help="serve only the REST API (no web UI), on port 7861")
    p.add_argument("--api-auth", default=None, help="user:pass[,user2:pass2] HTTP Basic auth for the API")
    p.add_argument("--cluster-address", default=None, metavar="HOST:PORT",
                   help="run the generations on a Ray cluster's worker actors (pip install -r requirements-cluster.txt)")
    p.add_argument("--workers", type=int, default=1, help="with --cluster-address: how many worker actors (each one "
                                                          "GPU, or its share of the CPUs)")
    p.add_argument("--api-log", action="store_true", help="log every API request (method, path, status, time)")
    p.add_argument("--cors-allow-origins", default=None,
                   help="origins (comma-separated) whose pages may call the API from a browser")
    p.add_argument("--cors-allow-origins-regex", default=None, help="the same, as one regular expression")
    p.add_argument("--insecure-no-auth", action="store_true",
                   help="allow --listen/--share without --gradio-auth/--api-auth (anyone who reaches it can use it)")
    p.add_argument("--hide-ui-dir-config", action="store_true",
                   help="no feature that names server folders (Extras' folder batch, Open folder)")
    p.add_argument("--freeze-settings", action="store_true", help="no setting can be changed (UI or API)")
    p.add_argument("--freeze-specific-settings", default=None,
                   help="comma-separated setting names that cannot be changed")
    p.add_argument("--loglevel", default=None, choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"],
                   type=str.upper, help="log level (default INFO)")


def _add_folders(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=PROJECT_ROOT, help="root holding models/ and outputs/")
    p.add_argument("--models-dir", type=Path, default=None, help="models root (default DATA_DIR/models)")
    p.add_argument("--ckpt-dir", type=Path, default=None, help="checkpoints (default MODELS_DIR/Stable-diffusion)")
    p.add_argument("--vae-dir", type=Path, default=None, help="VAEs (default MODELS_DIR/VAE)")
    p.add_argument("--embeddings-dir", type=Path, default=None,
                   help="textual-inversion embeddings (default: MODELS_DIR/embeddings, and DATA_DIR/embeddings "
                        "where it exists, as A1111 keeps them)")
    p.add_argument("--lora-dir", type=Path, default=None, help="LoRA networks (default MODELS_DIR/Lora)")
    p.add_argument("--controlnet-dir", type=Path, default=None,
                   help="ControlNet models (default MODELS_DIR/ControlNet), as the sd-webui-controlnet extension")
    p.add_argument("--hypernetwork-dir", type=Path, default=None, help="hypernetworks (default MODELS_DIR/hypernetworks)")
    p.add_argument("--esrgan-models-path", type=Path, default=None, help="ESRGAN models (default MODELS_DIR/ESRGAN)")
    p.add_argument("--realesrgan-models-path", type=Path, default=None,
                   help="Real-ESRGAN models (default MODELS_DIR/RealESRGAN)")
    p.add_argument("--outputs-dir", type=Path, default=None, help="where images are saved (default DATA_DIR/outputs)")
    p.add_argument("--styles-file", type=Path, default=None, help="styles file (default DATA_DIR/styles.csv)")
    p.add_argument("--ui-settings-file", type=Path, default=None, help="settings file (default DATA_DIR/config.json)")
    p.add_argument("--ckpt", default=None, help="checkpoint to load first (name or title)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=["auto", "cuda", "cpu", "mps"], default="auto")
    p.add_argument("--device-id", default=None, help="which CUDA device (its index) to use")
    p.add_argument("--use-cpu", nargs="+", default=[], type=str.lower, metavar="MODULE",
                   help="A1111's: 'all' or 'sd' runs on the CPU; other modules (gfpgan, ...) do not exist here")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (fp16 on GPUs), fp32, fp16, bf16; A1111's full = fp32, half = fp16, autocast = auto")
    p.add_argument("--no-half", action="store_true", help="run the whole model in fp32")
    p.add_argument("--no-half-vae", action="store_true", help="run the VAE in fp32")
    p.add_argument("--upcast-sampling", action="store_true",
                   help="half-precision UNet weights run under autocast (normalisations and softmax in fp32): "
                        "fewer NaN than plain fp16, less memory than --no-half; no effect with --no-half")
    p.add_argument("--disable-nan-check", action="store_true",
                   help="no NaN check after a VAE decode (a NaN image is not decoded again in fp32)")
    p.add_argument("--xformers", action="store_true", help="use xformers attention where its CUDA kernels work")
    p.add_argument("--force-enable-xformers", action="store_true", help="the same as --xformers")
    p.add_argument("--xformers-flash-attention", action="store_true", help="the same as --xformers")
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


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-size", type=int, default=2048, help="largest width/height a request may ask for")
    p.add_argument("--max-upload-pixels", type=int, default=4096 * 4096, help="largest uploaded image, in pixels")
    p.add_argument("--max-prompt-chunks", type=int, default=75,
                   help="longest prompt, in 75-token chunks (default 75: far above any real prompt)")
    p.add_argument("--shared-outputs", action="store_true",
                   help="with several accounts, save everyone's images in one outputs folder (default: each "
                        "account's own outputs/<account>/)")
    p.add_argument("--max-queued-per-user", type=int, default=50,
                   help="jobs one account (or browser session, or API client) may have waiting; more get a 429")


def announce_compat_flags(args: argparse.Namespace) -> None:
    """A one-line notice for each accepted A1111 flag that does nothing here; refuse the unsafe one."""
    if args.disable_safe_unpickle:
        raise SystemExit("--disable-safe-unpickle is refused: .ckpt/.pt files can run code when unpickled, so they "
                         "are always read with the restricted unpickler. Convert a refused file to .safetensors.")
    for flag, why in NOTICE_FLAGS.items():
        if getattr(args, dest(flag)):
            log.info("%s: accepted, no effect here (%s)", flag, why)
    for flag, why in NOTICE_VALUE_FLAGS.items():
        if getattr(args, dest(flag)) is not None:
            log.info("%s: accepted, no effect here (%s)", flag, why)
    other_cpu_modules = [m for m in args.use_cpu if m not in ("all", "sd")]
    if other_cpu_modules:
        log.info("--use-cpu %s: accepted, no effect here (there are no such modules)", " ".join(other_cpu_modules))
    if args.theme:
        log.info("--theme %s: open the UI with ?__theme=%s", args.theme, args.theme)


def dest(flag: str) -> str:
    """argparse's attribute name for a flag."""
    return flag.lstrip("-").replace("-", "_")


def device_choice(args: argparse.Namespace) -> str:
    """--device, with A1111's --use-cpu all|sd and --device-id."""
    if {"all", "sd"} & set(args.use_cpu):
        return "cpu"
    if args.device_id is not None and args.device in ("auto", "cuda"):
        if not args.device_id.isdigit():
            raise SystemExit(f"--device-id expects a CUDA device index such as 0 or 1, got '{args.device_id}'")
        return f"cuda:{args.device_id}"
    return args.device


def precision_choice(args: argparse.Namespace) -> str:
    """--precision with A1111's names: full = fp32 (as A1111's CPU recipe means it), half = fp16,
    autocast = auto; --no-half wins."""
    if args.no_half:
        return "fp32"
    return {"full": "fp32", "half": "fp16", "autocast": "auto"}.get(args.precision, args.precision)


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def server_address(args: argparse.Namespace) -> str:
    if args.server_name:
        return args.server_name
    return "0.0.0.0" if args.listen else "127.0.0.1"


def is_exposed(args: argparse.Namespace) -> bool:
    """Reachable from other machines: --listen, --share, or a --server-name other than loopback."""
    return args.listen or args.share or not is_loopback(server_address(args))


def cmd_flags(args: argparse.Namespace, data_dir: Path) -> dict:
    """The effective flags, as GET /sdapi/v1/cmd-flags returns them: never credentials, and paths relative to
    the data folder (outside it: only the folder's name), so no absolute server path is ever answered."""
    hidden = {"gradio_auth", "api_auth", "gradio_auth_path", "tls_keyfile", "tls_certfile"}
    return {k: _public(v, data_dir) for k, v in vars(args).items() if k not in hidden}


def _public(value, data_dir: Path):
    if isinstance(value, list):
        return [_public(v, data_dir) for v in value]
    if isinstance(value, Path):
        return public_path(value, data_dir)
    return value

