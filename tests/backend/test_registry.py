import hashlib
import os
import shutil
import threading
import time

import pytest

from backend import registry as registry_module
from backend.errors import ModelNotFound
from backend.registry import HashCache, ModelRegistry


def _registry(tmp_path, models):
    return ModelRegistry(models / "Stable-diffusion", models / "VAE", HashCache(tmp_path / "cache" / "hashes.json"))


def test_titles_carry_the_short_sha256(models_dir, tmp_path):
    reg = _registry(tmp_path, models_dir)
    names = [c.name for c in reg.checkpoints]
    assert "sd1.safetensors" in names and "diffusers-sd1" in names
    sd1 = reg.find_checkpoint("sd1.safetensors")
    digest = hashlib.sha256((models_dir / "Stable-diffusion" / "sd1.safetensors").read_bytes()).hexdigest()
    assert sd1.title == f"sd1.safetensors [{digest[:10]}]"
    assert reg.find_checkpoint(sd1.title) == sd1
    assert reg.find_checkpoint(digest[:10]) == sd1
    assert reg.find_checkpoint("sd1") == sd1


def test_unchanged_files_are_never_hashed_again(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "Stable-diffusion" / "sub").mkdir(parents=True)
    (models / "Stable-diffusion" / "sub" / "a.safetensors").write_bytes(b"a" * 100)
    calls = []
    real = registry_module._hash_file
    monkeypatch.setattr(registry_module, "_hash_file", lambda p: calls.append(p) or real(p))
    reg = _registry(tmp_path, models)
    assert [c.name for c in reg.checkpoints] == ["sub/a.safetensors"]
    reg.refresh()
    _registry(tmp_path, models)  # a new process reads the cache from disk
    assert len(calls) == 1
    (models / "Stable-diffusion" / "sub" / "a.safetensors").write_bytes(b"b" * 100)
    reg.refresh()
    assert len(calls) == 2


def test_refresh_finds_new_files_and_sidecar_vae(tmp_path, models_dir):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    reg = _registry(tmp_path, models)
    assert reg.checkpoints == []
    shutil.copy(models_dir / "Stable-diffusion" / "sd1.safetensors", models / "Stable-diffusion" / "m.safetensors")
    (models / "Stable-diffusion" / "m.vae.safetensors").write_bytes(b"x")
    reg.refresh()
    assert [c.name for c in reg.checkpoints] == ["m.safetensors"]  # the sidecar VAE is not a checkpoint
    assert reg.sidecar_vae(reg.checkpoints[0]) == models / "Stable-diffusion" / "m.vae.safetensors"


def test_unknown_and_path_like_names_are_not_found(models_dir, tmp_path):
    reg = _registry(tmp_path, models_dir)
    for name in ("nope.safetensors", "../sd1.safetensors", str(models_dir / "Stable-diffusion" / "sd1.safetensors")):
        with pytest.raises(ModelNotFound):
            reg.find_checkpoint(name)


def _run_with_deadline(fn, seconds: float = 30):
    """Run `fn` in a thread; a scan that hangs (on a FIFO, say) fails the test instead of hanging it."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the scan did not finish"
    return box["value"]


def test_hostile_entries_are_skipped_and_never_opened(tmp_path, models_dir):
    models = tmp_path / "models"
    folder = models / "Stable-diffusion"
    folder.mkdir(parents=True)
    shutil.copy(models_dir / "Stable-diffusion" / "sd1.safetensors", folder / "good.safetensors")
    (folder / "dangling.safetensors").symlink_to(tmp_path / "nowhere.safetensors")
    (folder / "loop").symlink_to(folder, target_is_directory=True)  # a folder link back to its parent
    (folder / "self.ckpt").symlink_to(folder / "self.ckpt")  # a link to itself (ELOOP)
    os.mkfifo(folder / "fifo.safetensors")
    (folder / "zero.safetensors").symlink_to("/dev/zero")
    (models / "VAE").mkdir()
    (models / "VAE" / "dangling.pt").symlink_to(tmp_path / "gone.pt")
    reg = _run_with_deadline(lambda: _registry(tmp_path, models))
    assert [c.name for c in reg.checkpoints] == ["good.safetensors"]
    assert reg.vaes == []
    _run_with_deadline(reg.refresh)
    assert [c.name for c in reg.checkpoints] == ["good.safetensors"]


def test_large_files_are_hashed_in_the_background(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    big = models / "Stable-diffusion" / "big.safetensors"
    big.write_bytes(b"b" * 2000)
    monkeypatch.setattr(registry_module, "HASH_NOW_BYTES", 1000)
    gate = threading.Event()
    real_hash = registry_module._hash_file
    monkeypatch.setattr(registry_module, "_hash_file", lambda path: gate.wait(30) and real_hash(path))
    reg = _registry(tmp_path, models)  # returns while the hash is still being computed
    entry = reg.find_checkpoint("big.safetensors")
    assert entry.sha256 is None and entry.title == "big.safetensors"
    gate.set()
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    deadline = time.time() + 30
    while reg.find_checkpoint("big").sha256 is None and time.time() < deadline:
        time.sleep(0.05)
    assert reg.find_checkpoint("big").title == f"big.safetensors [{digest[:10]}]"
    assert reg.find_checkpoint("big.safetensors [stale00000]").name == "big.safetensors"


def test_not_found_messages_name_no_server_path(tmp_path, models_dir):
    reg = _registry(tmp_path, models_dir)
    with pytest.raises(ModelNotFound) as caught:
        reg.find_checkpoint("missing")
    assert str(models_dir) not in str(caught.value) and "/" not in str(caught.value)
