"""Which networks a prompt asks for (<lora:...>, <hypernet:...>), and merging them into a model: A1111's extra
networks, as the job runner uses them. Unknown names and kinds are reported, and the image is made without them."""

from __future__ import annotations

from dataclasses import dataclass, field

from backend.memory.apply import park
from backend.memory.policy import Offload
from backend.networks.hypernetworks import HypernetLibrary, HypernetPatcher
from backend.networks.library import NetworkLibrary
from backend.networks.patch import NetworkPatcher, WantedNetwork
from backend.prompts.extra_networks import LORA_KINDS, parse_tags


@dataclass
class ChosenNetworks:
    """A prompt's networks: the prompt without its tags (what is encoded), what to merge, what was wrong."""

    prompt: str
    networks: list = field(default_factory=list)  # WantedNetwork
    hypernetworks: list = field(default_factory=list)  # (Hypernetwork, multiplier)
    warnings: list[str] = field(default_factory=list)


class NetworkApplier:
    def __init__(self, networks: NetworkLibrary, hypernetworks: HypernetLibrary):
        self.networks = networks
        self.hypernetworks = hypernetworks

    def choose(self, prompt: str, network_hashes: tuple = (), disabled: bool = False) -> ChosenNetworks:
        """The prompt's tags, looked up (by name, and by hash from a pasted infotext). With `disabled`
        (A1111's disable_extra_networks) the tags are removed and none is applied."""
        parsed = parse_tags(prompt)
        chosen = ChosenNetworks(parsed.text)
        for tag in () if disabled else parsed.tags:
            if tag.kind == "hypernet":
                hypernet = self.hypernetworks.load(tag.name)
                if hypernet is None:
                    chosen.warnings.append(f"Hypernetwork not found: {tag.name}")
                else:
                    chosen.hypernetworks.append((hypernet, tag.te))
                continue
            if tag.kind not in LORA_KINDS:
                chosen.warnings.append(f"{tag.text}: {tag.kind} networks are not supported; the tag was ignored")
                continue
            found = self.networks.find(tag.name, dict(network_hashes).get(tag.name))
            if found is None:
                chosen.warnings.append(f"Lora not found: {tag.name}")
                continue
            chosen.networks.append(WantedNetwork(found, tag.name, tag.te, tag.unet, tag.dyn))
        return chosen

    def patch(self, model, networks: list, hypernetworks: list) -> list[str]:
        """Merge `networks` and `hypernetworks` into `model` (or restore it when there are none); returns the
        merge's warnings."""
        if model.network_patcher is None:
            model.network_patcher, model.hypernet_patcher = NetworkPatcher(), HypernetPatcher()
        changing = model.network_patcher.changes(networks) or model.hypernet_patcher.changes(hypernetworks)
        if changing and _weights_not_in_place(model):
            # --lowvram keeps the weights in an offload map, --compile freezes them into its graph: take them back
            # (park); the runner puts the measures back before sampling (recompiling with the new weights).
            park(model)
        warnings = model.network_patcher.apply(model, networks, self.networks)
        model.hypernet_patcher.apply(model.unet, hypernetworks)
        return warnings


def _weights_not_in_place(model) -> bool:
    measures = model.applied_measures
    return measures is not None and (measures.compile or measures.offload is Offload.SEQUENTIAL)
