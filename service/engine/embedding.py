"""Encoder requests (embeddings, and cross-encoder scores for rerank): queued, packed by a token budget
into one varlen forward pass, then pooled (embedding models) or scored (cross-encoders).

No padding: inputs of different lengths share one packed batch (cu_seqlens),
so a batch costs the tokens it holds. Requests are taken whole in arrival
order; one larger than the budget runs in slices of its inputs. Every op of
the forward treats rows independently, so an input's result does not depend
on what it is batched with (tested: batched == one by one).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass

import torch

from models import AttentionMetadata, LoadedModel

log = logging.getLogger("kernelserve.engine")


@dataclass(frozen=True)
class EncoderInput:
    ids: list[int]
    token_types: list[int] | None = None  # segment ids of a text pair (cross-encoders); None: all 0

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _Job:
    inputs: list[EncoderInput]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class EmbeddingEngine:
    def __init__(self, loaded: LoadedModel, max_batch_tokens: int = 8192, observer=None):
        self.loaded = loaded
        self.max_batch_tokens = max_batch_tokens
        self.observer = observer  # called with (num_inputs, num_tokens) per forward pass
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"embed-{loaded.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        self._thread.join(timeout=10)

    @property
    def scores(self) -> bool:
        """A cross-encoder: each input (a text pair) gives one relevance score, not a vector."""
        return self.loaded.kind == "score"

    async def embed(self, inputs: list[list[int] | EncoderInput]) -> list[list[float]]:
        """One float32 vector per input, in input order (a one-element ``[score]`` for cross-encoders)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put(_Job([x if isinstance(x, EncoderInput) else EncoderInput(x) for x in inputs], future, loop))
        return await future

    async def score(self, pairs: list[EncoderInput]) -> list[float]:
        """Cross-encoders: one relevance score per tokenized pair, in input order."""
        if not self.scores:
            raise ValueError(f"{self.loaded.name} is not a cross-encoder")
        return [row[0] for row in await self.embed(pairs)]

    @torch.inference_mode()
    def embed_now(self, inputs: list[list[int] | EncoderInput]) -> torch.Tensor:
        """Run on the calling thread: [len(inputs), H] vectors (or [len(inputs), 1] scores), packed in slices
        of the token budget."""
        out, batch, tokens = [], [], 0
        for x in (x if isinstance(x, EncoderInput) else EncoderInput(x) for x in inputs):
            if batch and tokens + len(x) > self.max_batch_tokens:
                out.append(self._forward(batch))
                batch, tokens = [], 0
            batch.append(x)
            tokens += len(x)
        if batch:
            out.append(self._forward(batch))
        return torch.cat(out) if out else torch.empty(0)

    def _forward(self, batch: list[EncoderInput]) -> torch.Tensor:
        lengths = [len(x) for x in batch]
        device = self.loaded.device
        flat = torch.tensor([t for x in batch for t in x.ids], device=device)
        positions = torch.cat([torch.arange(n, device=device) for n in lengths])
        meta = AttentionMetadata.for_sequences(lengths, device)
        if getattr(self.loaded.config, "type_vocab_size", 0) and any(x.token_types for x in batch):
            types = torch.tensor([t for x in batch for t in (x.token_types or [0] * len(x))], device=device)
            hidden = self.loaded.model(flat, positions, meta, token_types=types)
        else:
            hidden = self.loaded.model(flat, positions, meta)
        if self.observer is not None:
            self.observer(len(batch), sum(lengths))
        if self.scores:
            return self.loaded.scorer(hidden, lengths)[:, None]
        return self.loaded.pooling(hidden, lengths)

    def _take_batch(self, first: _Job) -> list[_Job]:
        jobs, tokens = [first], sum(map(len, first.inputs))
        while tokens < self.max_batch_tokens:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                break
            jobs.append(job)
            tokens += sum(map(len, job.inputs))
        return jobs

    def _loop(self) -> None:
        while not self._stop.is_set():
            first = self._jobs.get()
            if first is None:
                continue
            jobs = self._take_batch(first)
            try:
                vectors = self.embed_now([ids for job in jobs for ids in job.inputs]).tolist()
            except Exception as err:
                log.exception("embedding batch failed")
                for job in jobs:
                    job.loop.call_soon_threadsafe(_resolve, job.future, None, err)
                continue
            start = 0
            for job in jobs:
                part = vectors[start:start + len(job.inputs)]
                start += len(job.inputs)
                job.loop.call_soon_threadsafe(_resolve, job.future, part, None)


def _resolve(future: asyncio.Future, value, error) -> None:
    if future.done():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
