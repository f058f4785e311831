"""Rerank and score: relevance of documents to a query (``/v1/rerank``) or of text pairs (``/v1/score``).

A cross-encoder reads each (query, document) pair through the encoder and its classification head; an
embedding model scores a pair by the cosine similarity of the two texts' embeddings (as vLLM does for
bi-encoders). Either way the inputs are batched by tokens with other encoder requests.
"""
from __future__ import annotations

import time

import torch
from fastapi import Request

from service.engine import EncoderInput

from .convert import reject_invalid_unicode
from .errors import APIError, bad_request
from .protocol import MAX_EMBEDDING_INPUTS, RerankRequest, ScoreRequest, make_id
from .registry import ModelRegistry, ServedModel
from .serving import until_disconnect


class RerankServing:
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    async def rerank(self, req: RerankRequest, request: Request) -> dict:
        served = self.registry.for_scoring(req.model)
        docs = [d if isinstance(d, str) else d.text for d in req.documents]
        reject_invalid_unicode([req.query, *docs], "documents")
        if not docs:
            raise bad_request("documents must not be empty", "documents")
        if req.top_n is not None and req.top_n < 0:
            raise bad_request(f"top_n must be a positive number of results, got {req.top_n}", "top_n")
        texts = docs
        if req.max_tokens_per_doc is not None:
            if req.max_tokens_per_doc < 1:
                raise bad_request(f"max_tokens_per_doc must be at least 1, got {req.max_tokens_per_doc}",
                                  "max_tokens_per_doc")
            texts = [served.loaded.tokenizer.truncate(d, req.max_tokens_per_doc) for d in docs]
        scores, tokens = await self._scores(served, [(req.query, d) for d in texts], "documents", request)
        order = sorted(range(len(docs)), key=lambda i: -scores[i])[: req.top_n or None]
        results = [{"index": i, "relevance_score": scores[i],
                    **({"document": {"text": docs[i]}} if req.return_documents else {})} for i in order]
        return {"id": make_id("rerank"), "model": served.name, "results": results,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def score(self, req: ScoreRequest, request: Request) -> dict:
        served = self.registry.for_scoring(req.model)
        reject_invalid_unicode([req.text_1, req.text_2], "text_2")
        pairs = _pairs(req.text_1, req.text_2)
        scores, tokens = await self._scores(served, pairs, "text_2", request)
        return {"id": make_id("score"), "object": "list", "created": int(time.time()), "model": served.name,
                "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}

    async def _scores(self, served: ServedModel, pairs: list[tuple[str, str]], param: str,
                      request: Request) -> tuple[list[float], int]:
        """One score per pair, and the tokens read."""
        if len(pairs) > MAX_EMBEDDING_INPUTS:
            raise bad_request(f"{len(pairs)} pairs to score; at most {MAX_EMBEDDING_INPUTS} are allowed per "
                              "request", param)
        if any(not a or not b for a, b in pairs):
            raise bad_request("texts to score must not be empty strings", param)
        if served.embedder.scores:
            inputs = [EncoderInput(ids, types) for ids, types in served.loaded.tokenizer.encode_pairs(pairs)]
            _check_lengths(served, [len(x) for x in inputs], param)
            scores = await until_disconnect(request, served.embedder.score(inputs))
            return scores, sum(map(len, inputs))
        return await self._cosine(served, pairs, param, request)

    async def _cosine(self, served: ServedModel, pairs, param: str, request: Request) -> tuple[list[float], int]:
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))  # each distinct text embedded once
        ids = served.loaded.tokenizer.encode_batch(texts)
        row = {t: i for i, t in enumerate(texts)}
        _check_lengths(served, [max(len(ids[row[x]]), len(ids[row[y]])) for x, y in pairs], param)
        vectors = torch.tensor(await until_disconnect(request, served.embedder.embed(ids)))
        a = vectors[[row[x] for x, _ in pairs]]
        b = vectors[[row[y] for _, y in pairs]]
        return torch.nn.functional.cosine_similarity(a, b, dim=-1).tolist(), sum(map(len, ids))


def _pairs(text_1: str | list[str], text_2: str | list[str]) -> list[tuple[str, str]]:
    """vLLM's rule: one text_1 against every text_2, or two lists of the same length zipped."""
    first = [text_1] if isinstance(text_1, str) else text_1
    second = [text_2] if isinstance(text_2, str) else text_2
    if not first or not second:
        raise bad_request("text_1 and text_2 must not be empty", "text_1" if not first else "text_2")
    if len(first) == 1:
        return [(first[0], t) for t in second]
    if len(first) != len(second):
        raise bad_request(f"text_1 has {len(first)} items and text_2 {len(second)}: give one text_1, or lists "
                          "of the same length", "text_2")
    return list(zip(first, second))


def _check_lengths(served: ServedModel, lengths: list[int], param: str) -> None:
    """``lengths[i]``: the tokens pair i puts through the model at once (both texts for a cross-encoder)."""
    limit = served.max_model_len
    for i, n in enumerate(lengths):
        if n > limit:
            raise APIError(400, f"{param} {i}: {n} tokens to score; this model's maximum is {limit}",
                           code="context_length_exceeded", param=param)
