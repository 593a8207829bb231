"""Prompt-language cost: parsing (emphasis, editing schedule, AND) and chunking a long model-site prompt,
against one full-size CLIP-L text-encoder pass, and a conditioning-cache hit, in the same run.

    .venv/bin/python -m benchmarks.prompts
"""

from __future__ import annotations

import time

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from backend.loading.build import build_tokenizer
from backend.loading.detect import Family, TextEncoderSpec
from backend.prompts.encode import ConditioningCache, PromptEncoder
from backend.prompts.parse import parse_emphasis, split_and
from backend.prompts.schedule import prompt_schedule

PROMPT = ("masterpiece, best quality, (ultra detailed:1.2), [[lowres]], 1girl, solo, (silver hair:1.1), "
          "[summer:autumn:0.4] forest, ((sunlight)), looking at viewer, [smile|serious], depth of field, "
          "bokeh, (film grain:0.8) BREAK cinematic lighting, sharp focus, intricate details, " * 2).strip()


def best_of(fn, repeats: int = 5, number: int = 1) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return min(times)


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = build_tokenizer(TextEncoderSpec("", "clip", {}, False, "<|endoftext|>"))
    encoder_model = CLIPTextModel(CLIPTextConfig()).eval()  # CLIP-L shapes (SD 1.x), random weights
    encoder = PromptEncoder(Family.SD1, [tokenizer], [encoder_model], torch.device("cpu"), ConditioningCache())

    def parse_only():
        for text, _ in split_and(PROMPT):
            for _, part in prompt_schedule(text, 20):
                parse_emphasis(part)

    def parse_and_chunk():
        for text, _ in split_and(PROMPT):
            for _, part in prompt_schedule(text, 20):
                encoder.chunks(part)

    def encode_uncached():
        encoder.cache = ConditioningCache(size=0)
        encoder.encode([PROMPT], 1, len(encoder.chunks(PROMPT)))

    encoder.cache = ConditioningCache()
    encoder.encode([PROMPT], 1, len(encoder.chunks(PROMPT)))

    def cache_hit():
        encoder.encode([PROMPT], 1, len(encoder.chunks(PROMPT)))

    with torch.no_grad():
        rows = [("parse (AND, schedule, emphasis)", best_of(parse_only, number=20)),
                ("parse + tokenize + chunk", best_of(parse_and_chunk, number=5)),
                ("conditioning cache hit (tokenizes to key)", best_of(cache_hit, number=5)),
                ("encode with CLIP-L, uncached (baseline)", best_of(encode_uncached, repeats=3))]
    baseline = rows[-1][1]
    print(f"prompt: {len(PROMPT)} characters, {len(encoder.chunks(PROMPT))} chunks\n")
    print("| what | ms | share of one uncached encode |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.2f} | {seconds / baseline:.1%} |")


if __name__ == "__main__":
    main()
