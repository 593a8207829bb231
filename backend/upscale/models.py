"""Model upscalers from A1111's folders (models/ESRGAN, models/RealESRGAN), run as A1111 runs them: BGR input in
0..1, output clamped, x255 and rounded; the image cut into tiles of 192 with an overlap of 8 and joined with
linear blends over the overlaps (backend/tile_grid.py); a scale beyond the model's runs it again
(up to 3 passes), then LANCZOS to the exact size."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend import tile_grid
from backend.errors import CheckpointError
from backend.memory.apply import release_memory
from backend.memory.fallback import is_out_of_memory
from backend.loading.checkpoint_file import open_checkpoint, read_pickle
from backend.upscale.nets import build_network

log = logging.getLogger(__name__)

SUFFIXES = (".pth", ".pt", ".safetensors")
TILE, OVERLAP = 192, 8  # A1111's ESRGAN_tile and ESRGAN_tile_overlap defaults
TILE_BATCH = 8  # tiles run together (A1111 runs them one by one; on a GPU a batch keeps it busy)
# Real-ESRGAN release files -> the names A1111 lists them under
RELEASE_NAMES = {"RealESRGAN_x4plus": "R-ESRGAN 4x+", "RealESRGAN_x4plus_anime_6B": "R-ESRGAN 4x+ Anime6B",
                 "RealESRGAN_x2plus": "R-ESRGAN 2x+", "realesr-general-x4v3": "R-ESRGAN General 4xV3",
                 "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
                 "realesr-animevideov3": "R-ESRGAN AnimeVideo"}


@dataclass(frozen=True)
class UpscalerFile:
    name: str
    path: Path
    scale: int  # as listed (A1111 lists ESRGAN files as 4x)


class UpscalerLibrary:
    """The upscaler models found in A1111's folders; each runs on `device` in `dtype` (the generation's, as
    A1111 runs them in half precision unless --no-half)."""

    def __init__(self, folders: list[Path], device: torch.device = torch.device("cpu"),
                 dtype: torch.dtype = torch.float32):
        self.folders = folders
        self.device, self.dtype = device, dtype
        self._lock = threading.Lock()
        self._files: dict[str, UpscalerFile] = {}
        self._loaded: dict[Path, torch.nn.Module] = {}
        self.refresh()

    def refresh(self) -> None:
        found = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()):
                name = RELEASE_NAMES.get(path.stem, path.stem)
                found.setdefault(name, UpscalerFile(name, path, 2 if "x2" in path.stem.lower() else 4))
        with self._lock:
            self._files = found

    def all(self) -> list[UpscalerFile]:
        with self._lock:
            return sorted(self._files.values(), key=lambda f: f.name.lower())

    def find(self, name: str) -> UpscalerFile | None:
        with self._lock:
            return self._files.get(name)

    def network(self, file: UpscalerFile) -> torch.nn.Module:
        with self._lock:
            if file.path in self._loaded:
                return self._loaded[file.path]
        if file.path.suffix.lower() == ".safetensors":
            tensors = open_checkpoint(file.path)
            state = {k: tensors[k] for k in tensors}
        else:
            state = read_pickle(file.path)
            if not isinstance(state, dict):
                raise CheckpointError(f"{file.path.name} holds no tensors")
        try:
            net = build_network(state).to(self.device, self.dtype)
        except CheckpointError as err:
            raise CheckpointError(f"upscaler {file.name}: {err}") from err
        with self._lock:
            self._loaded = {file.path: net}  # one at a time: they are small, but not needed together
        return net

    def upscale(self, image: Image.Image, name: str, scale: float) -> Image.Image:
        """A1111's Upscaler.upscale: passes of the model until the image covers int(size * scale) // 8 * 8."""
        net = self.network(self.find(name))
        dest = (int((image.width * scale) // 8 * 8), int((image.height * scale) // 8 * 8))
        for _ in range(3):
            if image.width >= dest[0] and image.height >= dest[1]:
                break
            before = image.size
            image = upscale_tiled(net, image)
            if image.size == before:
                break
        if image.size != dest:
            image = image.resize(dest, Image.LANCZOS)
        return image


def _to_bgr_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"))[:, :, ::-1].transpose(2, 0, 1) / 255
    return torch.from_numpy(np.ascontiguousarray(array))


def _from_bgr_tensor(tensor: torch.Tensor) -> Image.Image:
    array = 255.0 * np.moveaxis(tensor.float().clamp(0, 1).numpy(), 0, 2)
    return Image.fromarray(array.round().astype(np.uint8)[:, :, ::-1].copy(), "RGB")


@torch.inference_mode()
def run_network(net: torch.nn.Module, images: list[Image.Image]) -> list[Image.Image]:
    """Same-size pictures through the network as one batch, on the network's device and in its dtype. Output
    that is not finite (an fp16 overflow) is computed again in fp32, and the network stays in fp32."""
    batch = torch.stack([_to_bgr_tensor(image) for image in images])
    param = next(net.parameters())
    out = net(batch.to(param.device, param.dtype))
    if param.dtype == torch.float16 and not bool(torch.isfinite(out).all()):
        log.warning("the upscaler overflowed in fp16; it runs in fp32 from now on")
        net.float()
        out = net(batch.to(param.device, torch.float32))
    return [_from_bgr_tensor(tile) for tile in out.cpu()]


def upscale_tiled(net: torch.nn.Module, image: Image.Image, tile: int = TILE, overlap: int = OVERLAP,
                  batch: int = TILE_BATCH) -> Image.Image:
    """Run the network on the tiles (always whole tiles, `batch` at a time) and join the results
    (backend/tile_grid.py). Out of memory: fewer tiles at a time, down to one."""
    grid = tile_grid.split(image, tile, tile, overlap)
    tiles = [tile_image for _, _, tile_image in grid.tiles()]
    outputs: list[Image.Image] = []
    while len(outputs) < len(tiles):
        try:
            outputs += run_network(net, tiles[len(outputs) : len(outputs) + batch])
        except Exception as err:  # noqa: BLE001 - everything but out-of-memory is re-raised
            if not is_out_of_memory(err) or batch == 1:
                raise
        else:
            continue
        release_memory()
        batch //= 2
        log.warning("out of memory in the upscaler; retrying %d tiles at a time", batch)
    scale = outputs[0].width // tile
    results = iter(outputs)
    return tile_grid.combine(grid.map(lambda x, y, t: next(results), scale))
