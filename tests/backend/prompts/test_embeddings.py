"""Textual-inversion embeddings: every file format, fit to the model, placement in chunks, and images equal to
a reference where the embedding's vector is written into the text encoder's token table."""

import copy
import hashlib
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.generation.requests import GenerationRequest
from backend.prompts.embeddings import EmbeddingLibrary, read_embedding
from backend.prompts.encode import PromptEncoder
from tests.conftest import build_backend
from tests.fixtures.a1111_reference import a1111_txt2img
from tests.fixtures.reference import reference_pipeline

WIDTH = 64  # the tiny models' text width (SDXL: 64 + 64)


def _vectors(count, width=WIDTH, seed=0):
    return torch.randn((count, width), generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("embeddings")
    (folder / "sub").mkdir()
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": _vectors(1, seed=1)}, "name": "neon",
                "step": 500, "sd_checkpoint": "abc", "sd_checkpoint_name": "base"}, folder / "neon.pt")
    torch.save({"<concept>": _vectors(1, seed=2)[0]}, folder / "sub" / "concept.bin")
    save_file({"emb_params": _vectors(3, seed=3)}, str(folder / "three.safetensors"))
    save_file({"clip_l": _vectors(2, seed=4), "clip_g": _vectors(2, seed=5)}, str(folder / "xlstyle.safetensors"))
    (folder / "notes.pt").write_bytes(b"this is not a pickle")
    os.mkfifo(folder / "fifo.pt")  # never opened
    return folder


def test_every_format_loads_and_unfit_ones_are_skipped(embeddings_dir):
    library = EmbeddingLibrary([embeddings_dir])
    assert sorted(library.all()) == ["concept", "neon", "three", "xlstyle"]
    neon = library.all()["neon"]
    assert (neon.count, neon.width, neon.step, neon.checkpoint_name) == (1, 64, 500, "base")
    assert neon.short_hash == hashlib.sha256((embeddings_dir / "neon.pt").read_bytes()).hexdigest()[:12]
    assert library.all()["three"].count == 3 and library.all()["xlstyle"].width == 128
    loaded, skipped = library.split_by_fit(64)
    assert sorted(loaded) == ["concept", "neon", "three"] and sorted(skipped) == ["xlstyle"]
    assert sorted(library.split_by_fit(128)[0]) == ["xlstyle"]


def test_a_pickle_that_would_run_code_is_not_an_embedding(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"string_to_param": {"*": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="unsafe"):
        read_embedding(tmp_path / "evil.pt")
    assert EmbeddingLibrary([tmp_path]).all() == {}


def test_embeddings_take_their_vector_count_and_never_straddle_chunks(service, embeddings_dir):
    model = service.models.get(service.registry.find_checkpoint("sd1.safetensors"))
    library = EmbeddingLibrary([embeddings_dir])
    encoder = PromptEncoder(model.family, model.tokenizers, model.text_encoders, model.execution_device,
                            embeddings=library.split_by_fit(64)[0])
    chunks = encoder.chunks("(three:1.2) cat")
    assert chunks[0].tokens[:3] == [0, 0, 0] and chunks[0].weights[:4] == [1.2, 1.2, 1.2, 1.0]
    assert [(offset, e.name) for offset, e in chunks[0].fixes] == [(0, "three")]
    chunks = encoder.chunks("cat " * 73 + "three")  # 73 + 3 > 75: the embedding moves to the next chunk
    assert [len(c.tokens) for c in chunks] == [73, 3] and chunks[1].fixes[0][0] == 0
    assert [e.name for e in encoder.embeddings_used("a neon three")] == ["neon", "three"]


def _px(image):
    return np.asarray(image, dtype=np.int16)


def test_image_equals_a_text_encoder_with_the_vector_in_its_token_table(models_dir, tmp_path, tiny, embeddings_dir):
    svc = build_backend(models_dir, tmp_path / "out", embeddings_dirs=(embeddings_dir,))
    try:
        req = GenerationRequest(prompt="a neon cat", negative_prompt="", steps=3, width=64, height=64, seed=8,
                                sampler_name="Euler", checkpoint="sd1.safetensors", save_images=False)
        ours = svc.generate(req)
    finally:
        svc.shutdown()
    pipe = reference_pipeline(tiny["sd1"], "Euler", None)
    neon_ids = pipe.tokenizer("neon", add_special_tokens=False).input_ids
    assert len(neon_ids) == 1  # one token stands for the one vector: the reference swaps that token's row
    pipe.text_encoder = copy.deepcopy(pipe.text_encoder)
    with torch.no_grad():
        text_model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
        text_model.embeddings.token_embedding.weight[neon_ids[0]] = _vectors(1, seed=1)[0]
    cond, uncond = pipe.encode_prompt("a neon cat", "cpu", 1, True, "")
    expected = a1111_txt2img(pipe.unet, pipe.vae, {"context": cond}, {"context": uncond}, "Euler", None, 3, 7.0, [8],
                             64, 64)[0]
    assert np.abs(_px(ours.images[0]) - _px(expected)).max() <= 3
    digest = hashlib.sha256((embeddings_dir / "neon.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "neon: {digest}"' in ours.infotexts[0]
    assert "a neon cat\n" in ours.infotexts[0]  # the prompt as typed


def test_sdxl_embedding_feeds_each_encoder_its_vectors(models_dir, tmp_path, embeddings_dir):
    svc = build_backend(models_dir, tmp_path / "out", embeddings_dirs=(embeddings_dir,))
    try:
        base = dict(negative_prompt="", steps=3, width=64, height=64, seed=8, sampler_name="Euler",
                    checkpoint="sdxl.safetensors", save_images=False)
        with_it = svc.generate(GenerationRequest(prompt="xlstyle cat", **base))
        without = svc.generate(GenerationRequest(prompt="cat", **base))
        assert "TI hashes" in with_it.infotexts[0] and not np.array_equal(_px(with_it.images[0]),
                                                                         _px(without.images[0]))
        loaded, skipped = svc.embedding_lists()
        assert "xlstyle" in loaded and "neon" in skipped
    finally:
        svc.shutdown()
