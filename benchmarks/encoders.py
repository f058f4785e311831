"""Embedding and rerank throughput of kernelserve's encoder engine against sentence-transformers, in one process.

    python benchmarks/encoders.py [--texts 512] [--pairs 256] [--repeats 3]
    python benchmarks/encoders.py --peer-url http://127.0.0.1:7997 --peer-model NAME   # + a running peer

Same weights on both sides: all-MiniLM-L6-v2 (real) for embeddings, and for rerank the same MiniLM encoder under a
one-logit classification head (the shape of cross-encoder/ms-marco-MiniLM-L6-v2, whose weights are not
installable here; the head is one 384x384 and one 384x1 GEMM, so the cost is the real model's). Texts are the
chat prompts of benchmarks/prompts.txt; rerank pairs a query with each of them. Rows alternate kernelserve and
sentence-transformers ``--repeats`` times and keep each side's best, so load on the machine hits both alike.

``--peer-url``: also time a running OpenAI-compatible embeddings server and a Jina/Cohere-style rerank endpoint
(Infinity: ``infinity_emb v2``; text-embeddings-inference: ``text-embeddings-router``; started by hand where
they install, bound to 127.0.0.1) with the same texts over HTTP, against kernelserve's server on the same
weights, each side sent the same batches one request at a time.
Writes benchmarks/results/encoders.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.report import publish  # noqa: E402
from models import default_model_sources, load_model  # noqa: E402
from service.engine import EmbeddingEngine, EncoderInput  # noqa: E402

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
QUERY = "How do I make my web server faster?"


def load_texts(n: int) -> list[str]:
    with open(os.path.join(ROOT, "benchmarks", "prompts.txt")) as f:
        lines = [line.strip() for line in f if line.strip()]
    return [lines[i % len(lines)] + ("" if i < len(lines) else f" ({i})") for i in range(n)]


def best_rate(fn, items: int, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` runs (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return items / best


def cross_encoder_folder(minilm: str) -> str:
    """MiniLM's encoder weights under a random one-logit head, saved as a BertForSequenceClassification folder."""
    import shutil

    from transformers import BertForSequenceClassification

    folder = tempfile.mkdtemp(prefix="bench-cross-encoder-")
    model = BertForSequenceClassification.from_pretrained(minilm, num_labels=1)
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm, name), folder)
    return folder


def embedding_rows(minilm: str, texts: list[str], repeats: int) -> list[tuple[str, float, float]]:
    from sentence_transformers import SentenceTransformer

    loaded = load_model(minilm)
    engine = EmbeddingEngine(loaded)
    ids = loaded.tokenizer.encode_batch(texts)
    st = SentenceTransformer(minilm, device="cpu")
    ours = best_rate(lambda: engine.embed_now(ids), len(texts), repeats)
    # sentence-transformers tokenizes inside encode(); kernelserve's tokenization is timed apart below
    theirs = best_rate(lambda: st.encode(texts, batch_size=32), len(texts), repeats)
    with_tokenizing = best_rate(lambda: engine.embed_now(loaded.tokenizer.encode_batch(texts)), len(texts), repeats)
    return [("embeddings, all-MiniLM-L6-v2 (texts/s)", ours, theirs),
            ("embeddings incl. tokenization (texts/s)", with_tokenizing, theirs)]


def rerank_rows(minilm: str, texts: list[str], repeats: int) -> list[tuple[str, float, float]]:
    from sentence_transformers import CrossEncoder

    folder = cross_encoder_folder(minilm)
    loaded = load_model(folder)
    engine = EmbeddingEngine(loaded)
    pairs = [(QUERY, t) for t in texts]
    inputs = [EncoderInput(i, t) for i, t in loaded.tokenizer.encode_pairs(pairs)]
    ce = CrossEncoder(folder, device="cpu")
    ours = best_rate(lambda: engine.embed_now(inputs), len(pairs), repeats)
    theirs = best_rate(lambda: ce.predict(pairs, batch_size=32), len(pairs), repeats)
    return [("rerank, MiniLM-L6 cross-encoder (pairs/s)", ours, theirs)]


def peer_rows(peer_url: str, peer_model: str, texts: list[str], repeats: int) -> list[tuple[str, float, float]]:
    """kernelserve's server and a peer's, the same texts in batches of 32 per request, one request at a time."""
    import httpx

    from tests.conftest import Server  # the test suite's way to start a real server on 127.0.0.1

    server = Server("--model", MINILM)
    try:
        def embed(url, model):
            with httpx.Client(timeout=300) as c:
                for i in range(0, len(texts), 32):
                    c.post(url + "/v1/embeddings", json={"model": model, "input": texts[i:i + 32]}).raise_for_status()

        def rerank(url, model):
            with httpx.Client(timeout=300) as c:
                for i in range(0, len(texts), 32):
                    c.post(url + "/rerank", json={"model": model, "query": QUERY,
                                                   "documents": texts[i:i + 32]}).raise_for_status()

        rows = [("HTTP embeddings vs peer (texts/s)", best_rate(lambda: embed(server.url, MINILM), len(texts), repeats),
                 best_rate(lambda: embed(peer_url, peer_model), len(texts), repeats))]
        try:
            rows.append(("HTTP rerank vs peer (pairs/s)", best_rate(lambda: rerank(server.url, MINILM), len(texts), repeats),
                         best_rate(lambda: rerank(peer_url, peer_model), len(texts), repeats)))
        except httpx.HTTPStatusError as err:
            print(f"peer rerank skipped: {err}")
        return rows
    finally:
        server.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-url", help="a running Infinity / TEI server to compare over HTTP")
    parser.add_argument("--peer-model", default=MINILM, help="the model name the peer serves MiniLM under")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "encoders.md"))
    args = parser.parse_args(argv)
    minilm = default_model_sources()[MINILM]
    texts = load_texts(args.texts)
    rows = embedding_rows(minilm, texts, args.repeats) + rerank_rows(minilm, texts[: args.pairs], args.repeats)
    peer = "sentence-transformers"
    if args.peer_url:
        rows += peer_rows(args.peer_url, args.peer_model, texts, args.repeats)
        peer += f" / {args.peer_url}"
    lines = [f"# Encoders: kernelserve vs {peer}, same weights, one process", "",
             f"{datetime.date.today()} · {platform.node()} · {os.cpu_count()} cores · torch {torch.__version__} · "
             f"{torch.get_num_threads()} threads · float32 · {args.texts} texts, {args.pairs} pairs (chat prompts, "
             f"{sum(map(len, texts)) // len(texts)} characters on average) · best of {args.repeats}", "",
             "| workload | kernelserve | peer | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x |" for name, ours, theirs in rows]
    lines += ["", "kernelserve packs a batch without padding (varlen attention); sentence-transformers pads each batch "
              "of 32 to its longest text."]
    publish("\n".join(lines), args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
