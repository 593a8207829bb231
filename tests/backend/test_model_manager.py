"""The RAM cache of recent models: switching back is a cache hit, old models are evicted and really freed, and
resident memory does not grow across repeated switches."""

import gc
import weakref

import psutil
import pytest

from backend.memory.policy import GB
from tests.conftest import build_backend

A, B, C = "sd1.safetensors", "sd2-v.safetensors", "sd1-pickle.ckpt"


def _backend(models_dir, tmp_path, **settings):
    return build_backend(models_dir, tmp_path / "out", **settings)


def _switch(svc, name):
    return svc.models.get(svc.registry.find_checkpoint(name))


def test_switching_back_comes_from_the_cache(models_dir, tmp_path):
    svc = _backend(models_dir, tmp_path, checkpoint_cache=1)
    first_a = _switch(svc, A)
    _switch(svc, B)
    assert _switch(svc, A) is first_a  # not loaded again
    assert [f.name for f in svc.models.cached_files] == [B, A]
    svc.shutdown()


def test_least_recently_used_model_is_evicted_and_freed(models_dir, tmp_path):
    svc = _backend(models_dir, tmp_path, checkpoint_cache=1)
    a_unet = weakref.ref(_switch(svc, A).unet)
    _switch(svc, B)
    _switch(svc, C)
    gc.collect()
    assert [f.name for f in svc.models.cached_files] == [B, C]
    assert a_unet() is None, "an evicted model must not stay referenced anywhere"
    svc.shutdown()


def test_the_gb_budget_limits_the_cache(models_dir, tmp_path):
    svc = _backend(models_dir, tmp_path, checkpoint_cache=5, checkpoint_cache_gb=0.001)  # smaller than one model
    a_unet = weakref.ref(_switch(svc, A).unet)
    _switch(svc, B)
    gc.collect()
    assert [f.name for f in svc.models.cached_files] == [B] and a_unet() is None
    svc.shutdown()


@pytest.mark.parametrize("cache", [0, 1])
def test_rss_stays_bounded_across_six_switches(models_dir, tmp_path, cache):
    svc = _backend(models_dir, tmp_path, checkpoint_cache=cache)
    process = psutil.Process()
    for name in (A, B, A, B):  # warm-up: imports, allocator pools, the cache filled
        _switch(svc, name)
    warm = process.memory_info().rss
    model_mb = sum(p.numel() * p.element_size() for p in _switch(svc, A).unet.parameters()) / 2**20
    peak = warm
    for i in range(6):
        _switch(svc, (B, A)[i % 2])
        peak = max(peak, process.memory_info().rss)
    growth_mb = (peak - warm) / 2**20
    # a leaked model per switch would add ~17 MB (checkpoint file) each time: 100 MB over six switches
    assert growth_mb < 40, f"RSS grew {growth_mb:.0f} MB over 6 switches (unet {model_mb:.1f} MB)"
    svc.shutdown()


def test_the_memory_plan_is_logged_once_per_load(models_dir, tmp_path, caplog):
    svc = _backend(models_dir, tmp_path, checkpoint_cache=1)
    with caplog.at_level("INFO", logger="backend.model_manager"):
        for name in (A, A, B, A):
            _switch(svc, name)
    plans = [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory plan for")]
    assert len(plans) == 2  # A and B loaded once each; switching back to A came from the cache
    assert plans[0].startswith("memory plan for sd1.safetensors") and "attention sdpa, offload none" in plans[0]
    svc.shutdown()


def test_cache_limits_come_from_settings(models_dir, tmp_path):
    svc = _backend(models_dir, tmp_path, checkpoint_cache=3, checkpoint_cache_gb=2)
    assert svc.models.cache.max_models == 3 and svc.models.cache.max_bytes == 2 * GB
    svc.shutdown()


def test_the_same_file_with_its_hash_arrived_is_not_activated_again(models_dir, tmp_path, monkeypatch):
    """A large checkpoint is hashed in the background and its registry entry replaced when the hash lands: the
    next request names the same file by a new entry, which must not park the model and bring it back (on a GPU
    that moves the whole model to RAM and back on every request)."""
    import dataclasses

    svc = _backend(models_dir, tmp_path)
    try:
        first = svc.registry.find_checkpoint("sd1.safetensors")
        model = svc.models.get(first)
        activations = []
        original = type(svc.models)._activate
        monkeypatch.setattr(type(svc.models), "_activate",
                            lambda self, checkpoint: (activations.append(checkpoint), original(self, checkpoint)))
        rehashed = dataclasses.replace(first, sha256="0" * 64)
        assert rehashed != first
        assert svc.models.get(rehashed) is model and activations == []
        assert svc.models.current_file.sha256 == "0" * 64  # the infotext gets the hash from now on
    finally:
        svc.shutdown()
