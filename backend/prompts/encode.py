"""Prompt text -> the embeddings the UNet is conditioned on, as A1111 1.10 computes them (sd_hijack_clip):
emphasis weights, 75-token chunks with BOS/EOS and padding, comma backtracking, BREAK, emphasis modes, clip skip,
and SDXL's two encoders with the pooled output of the first chunk."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from backend.loading.detect import Family
from backend.prompts.embeddings import Embedding, EmbeddingLibrary, EmbeddingMatcher
from backend.prompts.parse import Fragment, parse_emphasis

CHUNK = 75  # tokens per chunk, plus start and end tokens = 77 positions
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack: a chunk is cut at a comma this close to its end


@dataclass
class Chunk:
    """75 prompt tokens at most (without start/end), each token's emphasis weight, and where embeddings'
    vectors go (offset in `tokens`, embedding; their places hold token 0 until the vectors replace them)."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    fixes: list[tuple[int, Embedding]] = field(default_factory=list)


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


def make_chunks(fragments: list[Fragment], tokenize: Callable[[str], list[int]], comma: int,
                matcher: EmbeddingMatcher | None = None) -> list[Chunk]:
    """Weighted fragments -> chunks, as A1111 cuts them: a full chunk starts a new one, but when the last comma
    is at most COMMA_BACKTRACK tokens back, the chunk is cut after that comma and the rest moves on; BREAK
    closes the chunk (even an empty one); an embedding that would not fit in the chunk starts the next."""
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal chunk, last_comma
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for fragment in fragments:
        if fragment.is_break:
            close()
            continue
        tokens = tokenize(fragment.text)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == CHUNK and last_comma != -1 and CHUNK - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved = Chunk(chunk.tokens[cut:], chunk.weights[cut:],
                              [(offset - cut, e) for offset, e in chunk.fixes if offset >= cut])
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                chunk.fixes = [(offset, e) for offset, e in chunk.fixes if offset < cut]
                close()
                chunk = moved
            if len(chunk.tokens) == CHUNK:
                close()
            found = matcher.match(tokens, position) if matcher else None
            if found is None:
                chunk.tokens.append(token)
                chunk.weights.append(fragment.weight)
                position += 1
                continue
            embedding, name_length = found
            if len(chunk.tokens) + embedding.count > CHUNK:
                close()
            chunk.fixes.append((len(chunk.tokens), embedding))
            chunk.tokens += [0] * embedding.count
            chunk.weights += [fragment.weight] * embedding.count
            position += name_length
    if chunk.tokens or not chunks:
        close()
    return chunks


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Weight each position's hidden state; "Original" then restores the chunk's mean (A1111's default)."""
    if mode == "None":
        return hidden
    z = hidden.float()
    weighted = z * weights.to(z.device, torch.float32)[None, :, None]
    if mode == "Original":
        weighted = weighted * (z.mean() / weighted.mean())
    return weighted.to(hidden.dtype)


class PromptEncoder:
    def __init__(self, family: Family, tokenizers: list, text_encoders: list, device: torch.device,
                 cache: ConditioningCache | None = None, emphasis: str = "Original",
                 embeddings: dict[str, Embedding] | None = None, embeddings_version: int = 0):
        self.family = family
        self.device = device  # where the encoders run (their weights may sit in RAM while offloaded)
        self.tokenizers = tokenizers
        self.text_encoders = text_encoders
        self.cache = cache or ConditioningCache(size=0)
        self.emphasis = emphasis
        vocab = tokenizers[0].get_vocab()
        self.comma = vocab.get(",</w>")
        self.matcher = EmbeddingMatcher.build(embeddings or {}, self._tokenize, embeddings_version)
        self.weights_key: tuple = ()  # which networks are merged into the text encoders (part of the cache key)

    def _tokenize(self, text: str) -> list[int]:
        # every SD text encoder uses the same vocabulary
        return self.tokenizers[0](text, add_special_tokens=False, truncation=False).input_ids if text else []

    def chunks(self, prompt: str) -> list[Chunk]:
        """The prompt's weighted token chunks (without start/end tokens), with embeddings placed."""
        return make_chunks(parse_emphasis(prompt), self._tokenize, self.comma, self.matcher)

    def embeddings_used(self, prompt: str) -> list[Embedding]:
        used = {}
        for chunk in self.chunks(prompt):
            for _, embedding in chunk.fixes:
                used.setdefault(embedding.name, embedding)
        return list(used.values())

    def token_chunks(self, prompt: str) -> list[list[int]]:
        return [c.tokens for c in self.chunks(prompt)]

    @torch.no_grad()
    def encode(self, prompts: list[str], clip_skip: int, chunks: int,
               check_interrupt: Callable[[], None] | None = None) -> Conditioning:
        """Encode each prompt padded to `chunks` chunks (positive and negative must have the same count).
        `check_interrupt` is called before each chunk, so a long prompt can be interrupted."""
        per_prompt = [self._cached_one(p, clip_skip, chunks, check_interrupt) for p in prompts]
        embeds = torch.cat([c.embeds for c in per_prompt])
        pooled = torch.cat([c.pooled for c in per_prompt]) if per_prompt[0].pooled is not None else None
        return Conditioning(embeds, pooled)

    def zeros(self, batch: int, chunks: int) -> Conditioning:
        """What SDXL is conditioned on for an empty negative prompt in A1111: zeros, pooled output included."""
        like = self._cached_one("", 1, chunks, None)
        pooled = torch.zeros_like(like.pooled).repeat(batch, 1) if like.pooled is not None else None
        return Conditioning(torch.zeros_like(like.embeds).repeat(batch, 1, 1), pooled)

    def _cached_one(self, prompt: str, clip_skip: int, chunks: int, check_interrupt) -> Conditioning:
        key = (prompt, self._effective_clip_skip(clip_skip), chunks, self.emphasis, self.matcher.version,
               self.weights_key, str(self.device))
        return self.cache.get(key, lambda: self._encode_one(prompt, clip_skip, chunks, check_interrupt))

    def _effective_clip_skip(self, clip_skip: int) -> int:
        return clip_skip if self.family is Family.SD1 else 1  # SD2 and SDXL ignore clip skip, as in A1111

    def _encode_one(self, prompt: str, clip_skip: int, chunks: int, check_interrupt) -> Conditioning:
        prompt_chunks = self.chunks(prompt)
        prompt_chunks += [Chunk() for _ in range(chunks - len(prompt_chunks))]
        parts, pooled = [], None
        for i, chunk in enumerate(prompt_chunks):
            if check_interrupt is not None:
                check_interrupt()
            weights = torch.tensor([1.0, *chunk.weights] + [1.0] * (CHUNK + 1 - len(chunk.weights)))
            per_encoder = []
            # SDXL's encoders are CLIP-L and bigG; its refiner's is bigG alone
            keys = ENCODER_KEYS[-len(self.text_encoders):] if self.family is Family.SDXL else ENCODER_KEYS
            for index, (tokenizer, encoder) in enumerate(zip(self.tokenizers, self.text_encoders, strict=True)):
                ids = _chunk_ids(chunk.tokens, tokenizer).to(self.device)
                with _embedding_vectors(encoder, chunk.fixes, keys[index], self.family is not Family.SDXL):
                    hidden, chunk_pooled = self._run_encoder(encoder, ids, self._effective_clip_skip(clip_skip))
                per_encoder.append(apply_emphasis(hidden, weights, self.emphasis))
                if i == 0 and chunk_pooled is not None:
                    pooled = chunk_pooled  # SDXL pools the first chunk, as A1111 does; never weighted
            parts.append(torch.cat(per_encoder, dim=-1))
        return Conditioning(torch.cat(parts, dim=1), pooled)

    def _run_encoder(self, encoder, ids: torch.Tensor, clip_skip: int):
        out = encoder(ids, output_hidden_states=True)
        if self.family is Family.SDXL:
            return out.hidden_states[-2], getattr(out, "text_embeds", None)  # penultimate, no final norm
        if clip_skip <= 1:
            return out.last_hidden_state, None
        return _final_layer_norm(encoder)(out.hidden_states[-clip_skip]), None


ENCODER_KEYS = ("clip_l", "clip_g")  # SDXL embeddings' vectors per text encoder


@contextlib.contextmanager
def _embedding_vectors(encoder, fixes: list[tuple[int, Embedding]], key: str, single: bool):
    """While the encoder runs, its token embeddings at the fixes' places are the embeddings' vectors (after
    the start token, before the position embeddings are added)."""
    if not fixes:
        yield
        return
    text_model = getattr(encoder, "text_model", encoder)

    def replace(module, args, output):
        output = output.clone()
        for offset, embedding in fixes:
            vectors = embedding.for_encoder(key, single).to(output.device, output.dtype)
            count = min(output.shape[1] - offset - 1, vectors.shape[0])
            output[:, offset + 1 : offset + 1 + count] = vectors[:count]
        return output

    handle = text_model.embeddings.token_embedding.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def text_width(model) -> int:
    """What an embedding must measure to fit the model: the text encoders' token widths together."""
    return sum(getattr(e, "text_model", e).embeddings.token_embedding.weight.shape[1] for e in model.text_encoders)


def _chunk_ids(tokens: list[int], tokenizer) -> torch.Tensor:
    """[start, tokens..., end] padded to 77: CLIP-L pads with the end token, OpenCLIP with one end token and
    then its pad id (0)."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = [bos, *tokens, eos]
    ids += [pad] * (CHUNK + 2 - len(ids))
    return torch.tensor([ids])


def _final_layer_norm(encoder) -> torch.nn.Module:
    text_model = getattr(encoder, "text_model", encoder)
    return text_model.final_layer_norm


def chunk_count(encoder: PromptEncoder, prompts: list[str]) -> int:
    return max(len(encoder.chunks(p)) for p in prompts)


def encoder_for(model, emphasis: str = "Original", library: EmbeddingLibrary | None = None) -> PromptEncoder:
    """The prompt encoder of a loaded model (generation builds it; loading only returns the modules), with the
    library's embeddings that fit the model."""
    if model.conditioning_cache is None:
        model.conditioning_cache = ConditioningCache()
    cache = model.conditioning_cache
    embeddings = library.split_by_fit(text_width(model))[0] if library else {}
    encoder = PromptEncoder(model.family, model.tokenizers, model.text_encoders, model.execution_device, cache,
                            emphasis, embeddings, library.version if library else 0)
    patcher = model.network_patcher
    encoder.weights_key = patcher.signature if patcher is not None else ()
    return encoder
