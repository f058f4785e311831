"""CUDA graphs for decode steps: capture the model's decode forward once per batch-size bucket, replay it.

A decode step of a small model is ~10 kernel launches a layer issued from Python; replaying a captured
graph issues them all at once (vLLM and nano-vllm do the same). A graph replays fixed addresses and
shapes, so its inputs live in one static int32 buffer sized for the largest bucket:

    tokens, positions, slot_mapping, decode_seq_lens  [4, B_max]
    block_tables                                      [B_max, W]  W = blocks of the longest allowed sequence

laid out in that order, so a step of bucket b sends one contiguous prefix (the four rows, then b table
rows) from a pinned twin in one copy.

A step of n decoding sequences is padded to the smallest bucket b >= n: pad rows write their K/V
nowhere (slot -1), attend over nothing (length 0) and their logits are dropped. The table width W is
fixed, so the paged kernel's split-KV count (a function of W) is fixed per graph. Prefill and mixed steps
run eagerly, as do encoder-decoders (their cross-attention inputs vary per step).

On CPU (tests) the same padding runs without capture (``capture=False``): replaying is then calling
the model on the padded static buffers, which proves the padding gives the unpadded logits.
"""
from __future__ import annotations

import logging
import time

import torch

from models import AttentionMetadata

from .staging import CopyFence

log = logging.getLogger("kernelserve.engine")


def graph_batch_sizes(max_num_seqs: int) -> list[int]:
    """The buckets: 1, 2, 4, 8, then steps of 8 up to ``max_num_seqs`` (rounded up to a multiple of 8)."""
    if max_num_seqs <= 8:
        return [b for b in (1, 2, 4) if b < max_num_seqs] + [max_num_seqs]
    return [1, 2, 4] + list(range(8, -(-max_num_seqs // 8) * 8 + 1, 8))


def bucket_for(n: int, sizes: list[int]) -> int | None:
    """The smallest bucket holding ``n`` rows, or None when ``n`` is past the largest (run eagerly)."""
    return next((b for b in sizes if b >= n), None)


class DecodeGraphs:
    """Static decode buffers and one captured graph per bucket for ``model``."""

    def __init__(self, model, kv_caches, max_num_seqs: int, max_blocks_per_seq: int, device, capture: bool):
        self.model, self.kv_caches, self.device, self.capture = model, kv_caches, torch.device(device), capture
        self.sizes = graph_batch_sizes(max_num_seqs)
        b, w = self.sizes[-1], max_blocks_per_seq
        pinned = self.device.type == "cuda"
        # host staging (pinned: the copy is asynchronous) and its device twin, one layout (module docstring)
        self.host = torch.zeros(4 * b + b * w, dtype=torch.int32, pin_memory=pinned)
        self.flat = torch.zeros(4 * b + b * w, dtype=torch.int32, device=device)
        self.host_rows, self.host_tables = self.host[:4 * b].view(4, b), self.host[4 * b:].view(b, w)
        self.rows, self.tables = self.flat[:4 * b].view(4, b), self.flat[4 * b:].view(b, w)
        self.fence = CopyFence(self.device)  # the last copy out of ``host``
        self.tokens, self.positions, self.slots, self.seq_lens = self.rows.unbind(0)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # bucket -> static logits [b, V]
        self.pool = None
        self.pool_bytes = 0  # device memory the capture took (free memory before minus after), once captured

    @property
    def width(self) -> int:
        return self.tables.shape[1]

    def _meta(self, b: int) -> AttentionMetadata:
        empty = torch.zeros(1, dtype=torch.int32, device=self.device)
        return AttentionMetadata(num_prefill_tokens=0, cu_seqlens_q=empty, cu_seqlens_k=empty, max_seqlen_q=0,
                                 max_seqlen_k=0, decode_block_tables=self.tables[:b],
                                 decode_seq_lens=self.seq_lens[:b], slot_mapping=self.slots[:b])

    def _forward(self, b: int) -> torch.Tensor:
        hidden = self.model(self.tokens[:b], self.positions[:b], self._meta(b), self.kv_caches)
        return self.model.logits(hidden)

    @torch.inference_mode()
    def capture_all(self) -> float:
        """Capture every bucket, largest first (its memory pool then serves the smaller ones)."""
        if not self.capture:
            return 0.0
        start = time.perf_counter()
        torch.cuda.synchronize(self.device)
        free_before = torch.cuda.mem_get_info(self.device)[0]
        for b in reversed(self.sizes):
            self._forward(b)  # eager once: every kernel compiled and tuned before capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.outputs[b] = self._forward(b)
            self.pool = graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        self.pool_bytes = free_before - torch.cuda.mem_get_info(self.device)[0]
        log.info("captured decode CUDA graphs for batch sizes %s in %.1f s (%.0f MiB of device memory)", self.sizes,
                 elapsed, self.pool_bytes / 2**20)
        return elapsed

    def fits(self, n: int, longest_table: int) -> bool:
        return bucket_for(n, self.sizes) is not None and longest_table <= self.width

    @torch.inference_mode()
    def run(self, tokens: list[int], positions: list[int], slots: list[int], tables: list[list[int]],
            seq_lens: list[int]) -> torch.Tensor:
        """Logits [n, V] of a decode step of n sequences (``fits`` must hold), through the padded buffers.

        The host staging is refilled every step: the previous step's copy out of it is waited for first
        (not every step reads its results back before the next: warm-up, a step of paused beams)."""
        n = len(tokens)
        b = bucket_for(n, self.sizes)
        self.fence.wait()
        self._fill_host(n, b, tokens, positions, slots, tables, seq_lens)
        sent = self.rows.numel() + b * self.width  # the four rows and the bucket's table rows: one prefix
        self.flat[:sent].copy_(self.host[:sent], non_blocking=True)
        self.fence.record()
        if b in self.graphs:
            self.graphs[b].replay()
            return self.outputs[b][:n]
        return self._forward(b)[:n]

    def _fill_host(self, n: int, b: int, tokens, positions, slots, tables, seq_lens) -> None:
        rows, tables_host = self.host_rows, self.host_tables
        # pad rows: no write (slot -1), nothing to attend (length 0), token and position 0
        rows[:, n:b] = torch.tensor([[0], [0], [-1], [0]], dtype=torch.int32)
        rows[:, :n] = torch.tensor([tokens, positions, slots, seq_lens], dtype=torch.int32)
        used = max(len(t) for t in tables)  # one tensor for the used columns; the rest stays zero
        tables_host[:b].zero_()
        tables_host[:n, :used] = torch.tensor([t + [0] * (used - len(t)) for t in tables], dtype=torch.int32)
