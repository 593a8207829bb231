"""The backend wired together from Settings: what app.py serves, what tests build, and what each cluster worker
builds for itself (backend/cluster.py)."""

from __future__ import annotations

import logging

from backend.settings import Settings

log = logging.getLogger(__name__)


def build_service(settings: Settings):
    """The generation service on this machine's device; with `settings.cluster_address`, its jobs run on the
    cluster's worker actors instead (each of which builds its own service with this function)."""
    from backend.control.models import ControlNetLibrary
    from backend.memory import policy
    from backend.memory.apply import configure_math
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
    vae_dtype = policy.choose_vae_dtype(dtype, settings.no_half_vae, device, facts)
    configure_math(device)
    log.info("device %s, precision %s, VAE precision %s", device, dtype, vae_dtype)
    placement = Placement(device, dtype, vae_dtype, settings.memory, probe)
    cache = CacheLimits(settings.checkpoint_cache, policy.cache_budget_bytes(facts, settings.checkpoint_cache_gb))
    registry = ModelRegistry(settings.checkpoint_dir, settings.vae_folder, HashCache(settings.hash_cache_file))
    models = ModelManager(registry, placement, cache, settings.prediction_overrides)
    embeddings = EmbeddingLibrary(settings.embedding_folders)
    networks = NetworkLibrary([settings.lora_folder])
    upscalers = UpscalerLibrary(list(settings.upscaler_folders), device, policy.choose_upscaler_dtype(dtype))
    hypernetworks = HypernetLibrary([settings.hypernetwork_dir or settings.models_dir / "hypernetworks"])
    styles = StyleLibrary(settings.styles_file or settings.models_dir.parent / "styles.csv")
    options = Options(path=settings.config_file)
    controlnets = ControlNetLibrary(settings.controlnet_folder)
    cluster = None
    if settings.cluster_address:
        from backend.cluster import WorkerPool  # Ray is needed only here (requirements-cluster.txt)

        cluster = WorkerPool(settings)
    return GenerationService(settings, models, OutputWriter(settings.outputs_dir, options), options=options,
                             embeddings=embeddings, networks=networks, upscalers=upscalers,
                             hypernetworks=hypernetworks, styles=styles, controlnets=controlnets, cluster=cluster)
