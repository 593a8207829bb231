import hashlib
import shutil

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
