"""all-MiniLM-L6-v2 (real weights) against sentence-transformers."""
from __future__ import annotations

import pytest
import torch

from models import AttentionMetadata, load_model

from .conftest import MINILM

pytestmark = pytest.mark.slow

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "hi", "?", "Ünïcödé text, naïve café.",
    "The quick brown fox jumps over the lazy dog " * 6, "日本語の文章です。", "Numbers 1 2 3 4 5 6 7 8 9 10",
    "kernelserve serves embeddings", "Paris is the capital of France.", "What is the capital of France?",
    "An apple a day keeps the doctor away.", "Triton kernels fuse attention.", "short", "x " * 40,
    "Machine learning is fun.", "I love programming in Python!", "The weather is nice today.",
    "She sells sea shells by the sea shore.", "To be or not to be, that is the question.",
    "E = mc^2", "emoji 🙂🚀", "tabs\tand\nnewlines", "UPPER CASE TEXT", "a much longer sentence " * 12,
]


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_model(MINILM)


def embed(loaded, texts):
    ids = loaded.tokenizer.encode_batch(texts)
    lengths = [len(i) for i in ids]
    flat = torch.tensor([t for seq in ids for t in seq])
    positions = torch.cat([torch.arange(n) for n in lengths])
    with torch.no_grad():
        hidden = loaded.model(flat, positions, AttentionMetadata.for_sequences(lengths))
    return loaded.pooling(hidden, lengths)


def test_embeddings_match_sentence_transformers(minilm, minilm_path):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(minilm_path, device="cpu").encode(SENTENCES, convert_to_tensor=True)
    ours = embed(minilm, SENTENCES)
    assert len(SENTENCES) == 32
    cos = torch.nn.functional.cosine_similarity(ours, reference.float(), dim=-1)
    assert cos.min().item() >= 0.9999, cos


def test_batch_equals_one_by_one(minilm):
    batch = embed(minilm, SENTENCES[:12])
    single = torch.cat([embed(minilm, [s]) for s in SENTENCES[:12]])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)
    assert torch.allclose(batch.norm(dim=-1), torch.ones(12), atol=1e-5)
