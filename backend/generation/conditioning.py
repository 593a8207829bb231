"""Prompt text -> the embeddings the UNet is conditioned on, for each model family.

We encode prompts ourselves rather than through the diffusers pipelines so that clip skip and prompts longer
than 75 tokens behave as in A1111 (the prompt is cut into 75-token chunks, each encoded and concatenated)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from backend.loading.detect import Family

CHUNK = 75  # tokens per chunk, plus start and end tokens = 77 positions


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (batch, 77 * chunks, dim)
    pooled: torch.Tensor | None = None  # SDXL only: (batch, projection_dim)


class ConditioningCache:
    """The embeddings of the most recent prompts. As in A1111, generating again with the same prompt (or a batch
    of it) runs the text encoders once."""

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: OrderedDict[tuple, Conditioning] = OrderedDict()

    def get(self, key: tuple, make: Callable[[], Conditioning]) -> Conditioning:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self._entries[key] = make()
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value


class PromptEncoder:
    def __init__(self, family: Family, tokenizers: list, text_encoders: list, device: torch.device,
                 cache: ConditioningCache | None = None):
        self.family = family
        self.device = device  # where the encoders run (their weights may sit in RAM while offloaded)
        self.tokenizers = tokenizers
        self.text_encoders = text_encoders
        self.cache = cache or ConditioningCache(size=0)

    def token_chunks(self, prompt: str) -> list[list[int]]:
        """Token ids of `prompt` without start/end tokens, cut into chunks of at most 75."""
        ids = self.tokenizers[0](prompt, add_special_tokens=False, truncation=False).input_ids
        return [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]

    @torch.no_grad()
    def encode(self, prompts: list[str], clip_skip: int, chunks: int,
               check_interrupt: Callable[[], None] | None = None) -> Conditioning:
        """Encode each prompt padded to `chunks` chunks (positive and negative must have the same count).
        `check_interrupt` is called before each chunk, so a long prompt can be interrupted."""
        per_prompt = [self._cached_one(p, clip_skip, chunks, check_interrupt) for p in prompts]
        embeds = torch.cat([c.embeds for c in per_prompt])
        pooled = torch.cat([c.pooled for c in per_prompt]) if per_prompt[0].pooled is not None else None
        return Conditioning(embeds, pooled)

    def _cached_one(self, prompt: str, clip_skip: int, chunks: int, check_interrupt) -> Conditioning:
        key = (prompt, clip_skip, chunks, str(self.device))
        return self.cache.get(key, lambda: self._encode_one(prompt, clip_skip, chunks, check_interrupt))

    def _encode_one(self, prompt: str, clip_skip: int, chunks: int, check_interrupt) -> Conditioning:
        token_chunks = self.token_chunks(prompt)
        token_chunks += [[]] * (chunks - len(token_chunks))
        parts, pooled = [], None
        for i, tokens in enumerate(token_chunks):
            if check_interrupt is not None:
                check_interrupt()
            per_encoder = []
            for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
                ids = _chunk_ids(tokens, tokenizer).to(self.device)
                hidden, chunk_pooled = self._run_encoder(encoder, ids, clip_skip)
                per_encoder.append(hidden)
                if i == 0 and chunk_pooled is not None:
                    pooled = chunk_pooled  # SDXL pools the first chunk, as A1111 does
            parts.append(torch.cat(per_encoder, dim=-1))
        return Conditioning(torch.cat(parts, dim=1), pooled)

    def _run_encoder(self, encoder, ids: torch.Tensor, clip_skip: int):
        out = encoder(ids, output_hidden_states=True)
        if self.family is Family.SDXL:
            # SDXL: penultimate layer (clip skip counts further back), no final layer norm.
            hidden = out.hidden_states[-(clip_skip + 1)]
            pooled = getattr(out, "text_embeds", None)
            return hidden, pooled
        if clip_skip <= 1:
            return out.last_hidden_state, None
        return _final_layer_norm(encoder)(out.hidden_states[-clip_skip]), None


def _chunk_ids(tokens: list[int], tokenizer) -> torch.Tensor:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = [bos, *tokens, eos]
    ids += [tokenizer.pad_token_id] * (CHUNK + 2 - len(ids))
    return torch.tensor([ids])


def _final_layer_norm(encoder) -> torch.nn.Module:
    text_model = getattr(encoder, "text_model", encoder)
    return text_model.final_layer_norm


def chunk_count(encoder: PromptEncoder, prompts: list[str]) -> int:
    return max(len(encoder.token_chunks(p)) for p in prompts)
