"""Turns a scheduled step into flat tensors, runs one forward pass and returns the logits to sample."""
from __future__ import annotations

import logging
from itertools import accumulate

import torch

from kernels import runs_triton, trusted_calls
from models import AttentionMetadata, LoadedModel, huge_pages
from models.encoder_decoder import CrossAttention

from .block_manager import RELEASED
from .config import GiB, EngineConfig
from .cuda_graphs import DecodeGraphs, graph_batch_sizes
from .scheduler import SchedulerOutput
from .sequence import Sequence
from .staging import Staging

log = logging.getLogger("kernelserve.engine")


def kv_cache_blocks(loaded: LoadedModel, config: EngineConfig) -> int:
    """How many KV blocks fit the configured memory budget."""
    cfg = loaded.config
    element = torch.tensor([], dtype=loaded.dtype).element_size()
    per_block = 2 * cfg.num_layers * config.block_size * cfg.num_kv_heads * cfg.head_dim * element
    budget = config.kv_cache_memory
    if budget is None:
        if loaded.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(loaded.device)
            budget = int(free * 0.9) - graph_memory(loaded, config)
        else:
            budget = GiB
    return max(1, budget // per_block)


def uses_graphs(loaded: LoadedModel, config: EngineConfig) -> bool:
    if loaded.is_encoder_decoder or config.cuda_graphs == "off":
        return False
    return config.cuda_graphs == "padded" or loaded.device.type == "cuda"


def graph_memory(loaded: LoadedModel, config: EngineConfig) -> int:
    """Bytes kept back from the KV cache for the decode graphs' memory pool: the largest bucket's fp32
    logits and the activations one layer holds at once (hidden states, QKV, the gated FFN's two halves),
    twice over for the allocator's rounding. An estimate, not a measurement."""
    if not uses_graphs(loaded, config):
        return 0
    cfg = loaded.config
    rows = graph_batch_sizes(config.max_num_seqs)[-1]
    per_row = 4 * cfg.vocab_size + 4 * (4 * cfg.hidden_size + 3 * getattr(cfg, "intermediate_size", cfg.hidden_size))
    return 2 * rows * per_row


class ModelRunner:
    def __init__(self, loaded: LoadedModel, config: EngineConfig, num_blocks: int, max_model_len: int):
        self.loaded = loaded
        self.model = loaded.model
        self.device = loaded.device
        self.block_size = config.block_size
        self.staging = Staging(self.device, torch.int32)  # the eager path's step inputs, one copy a step
        self.num_blocks = num_blocks
        # the step's inputs are checked once on the host (_check_step) and the kernels' per-call checks are
        # skipped; the warm-up turns them back on, so every shape it runs is checked once before serving
        self.check_kernel_args = False
        cfg = loaded.config
        shape = (num_blocks, config.block_size, cfg.num_kv_heads, cfg.head_dim)
        if self.device.type == "cpu":  # in huge pages, as the weights (models/huge_pages.py)
            caches = huge_pages.zeros(shape, loaded.dtype, 2 * cfg.num_layers)
            self.kv_caches = list(zip(caches[0::2], caches[1::2]))
        else:
            self.kv_caches = [(torch.zeros(shape, dtype=loaded.dtype, device=self.device),
                               torch.zeros(shape, dtype=loaded.dtype, device=self.device))
                              for _ in range(cfg.num_layers)]
        log.info("%s: KV cache of %d blocks x %d tokens (%.0f MiB)", loaded.name, num_blocks, config.block_size,
                 2 * sum(k.numel() * k.element_size() for k, _ in self.kv_caches) / 2**20)
        # encoder-decoders: each sequence's cross-attention K/V, computed once at admission
        self.cross_kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        # where the Triton paged kernel runs, eager decode tables are as wide as the graphs' (the longest sequence
        # admitted): its split-KV count and table stride never change, so it compiles once (see
        # kernels/compile_keys.py); the torch path gathers every column it is given, so there tables stay as
        # wide as the step's longest
        self.table_width = -(-max_model_len // config.block_size) if runs_triton(self.device) else None
        self.graphs: DecodeGraphs | None = None
        if uses_graphs(loaded, config):  # tables as wide as the longest sequence the engine admits
            self.graphs = DecodeGraphs(self.model, self.kv_caches, config.max_num_seqs,
                                       -(-max_model_len // config.block_size), self.device,
                                       capture=self.device.type == "cuda" and config.cuda_graphs == "auto")

    def share_cross(self, parent: Sequence, child: Sequence) -> None:
        """A forked beam attends to the same encoder output."""
        if parent.seq_id in self.cross_kv:
            self.cross_kv[child.seq_id] = self.cross_kv[parent.seq_id]

    def release(self, seq: Sequence) -> None:
        """Drop what the runner keeps for a finished sequence (its cross-attention K/V)."""
        self.cross_kv.pop(seq.seq_id, None)

    def _encode_new(self, seqs: list[Sequence]) -> None:
        """Run the encoder once, packed, for the sequences that have no cross K/V yet."""
        new = [s for s in seqs if s.seq_id not in self.cross_kv]
        if not new:
            return
        lengths = [len(s.encoder_token_ids) for s in new]
        ids = torch.tensor([t for s in new for t in s.encoder_token_ids], device=self.device)
        encoded = self.model.encode(ids, AttentionMetadata.for_sequences(lengths, self.device))
        start = 0
        for s, n in zip(new, lengths):
            self.cross_kv[s.seq_id] = self.model.cross_kv(encoded[start:start + n])
            start += n

    def _cross(self, out: SchedulerOutput) -> CrossAttention | None:
        if not self.loaded.is_encoder_decoder:
            return None
        seqs = [c.seq for c in out.prefills] + out.decodes
        self._encode_new(seqs)
        q_lens = [c.end - c.start for c in out.prefills] + [1] * len(out.decodes)
        return CrossAttention.pack([self.cross_kv[s.seq_id] for s in seqs], q_lens)

    def _slots(self, seq: Sequence, start: int, end: int) -> list[int]:
        bs, table = self.block_size, seq.block_table
        return [table[p // bs] * bs + p % bs for p in range(start, end)]

    def _read_slots(self, seq: Sequence, end: int) -> list[int]:
        """Cache slots of positions [0, end) to read keys from. A block released behind the sliding window
        (RELEASED) is read as block 0: those keys are behind every query's window, masked whatever they hold."""
        bs, table = self.block_size, seq.block_table
        return [max(table[p // bs], 0) * bs + p % bs for p in range(end)]

    def _metadata(self, out: SchedulerOutput) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor,
                                                      list[Sequence]]:
        """The step's flat inputs, sent to the device in one copy: (token ids, positions, metadata, the
        rows of the hidden states to take logits of, the sequences those rows sample for)."""
        tokens, positions, slots, kv_slots = [], [], [], []
        q_lens, k_lens, rows, seqs = [], [], [], []
        has_prefix = any(c.start > 0 for c in out.prefills)
        for c in out.prefills:
            ids = c.seq.token_ids
            tokens += ids[c.start:c.end]
            positions += range(c.start, c.end)
            slots += self._slots(c.seq, c.start, c.end)
            if has_prefix:  # keys are read back from the cache only when some prefix was cached
                kv_slots += self._read_slots(c.seq, c.end)
            q_lens.append(c.end - c.start)
            k_lens.append(c.end)
            if c.samples:
                rows.append(len(tokens) - 1)
                seqs.append(c.seq)
        width = max((len(s.block_table) for s in out.decodes), default=0)
        if self.table_width is not None and out.decodes:
            width = max(width, self.table_width)
        tables, lens = [], []
        for seq in out.decodes:
            rows.append(len(tokens))
            seqs.append(seq)
            tokens.append(seq.token_ids[-1])
            positions.append(len(seq) - 1)
            slots += self._slots(seq, len(seq) - 1, len(seq))
            tables += seq.block_table + [0] * (width - len(seq.block_table))
            lens.append(len(seq))
        self._check_step(tokens, tables, slots, kv_slots)
        (tokens_t, positions_t, slots_t, kv_slots_t, cu_q, cu_k, tables_t, lens_t, rows_t) = self.staging.send(
            tokens, positions, slots, kv_slots, [0, *accumulate(q_lens)], [0, *accumulate(k_lens)], tables, lens,
            rows)
        meta = AttentionMetadata(
            num_prefill_tokens=sum(q_lens), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
            max_seqlen_q=max(q_lens, default=0), max_seqlen_k=max(k_lens, default=0),
            prefill_kv_slots=kv_slots_t if has_prefix else None,
            decode_block_tables=tables_t.view(len(lens), width) if out.decodes else None,
            decode_seq_lens=lens_t if out.decodes else None, slot_mapping=slots_t)
        return tokens_t, positions_t, meta, rows_t, seqs

    def _check_step(self, tokens: list[int], tables: list[int], *slot_lists: list[int]) -> None:
        """The step's indices, checked once on the host instead of in every kernel call of every layer (the
        kernels mask what is out of range, but an embedding lookup would not): a failure is an engine bug."""
        vocab, top = self.loaded.config.vocab_size, self.num_blocks * self.block_size
        if tokens and not 0 <= min(tokens) <= max(tokens) < vocab:
            raise RuntimeError(f"step inputs: a token id outside [0, {vocab})")
        for slots in slot_lists:
            if slots and not 0 <= min(slots) <= max(slots) < top:
                raise RuntimeError(f"step inputs: a KV slot outside [0, {top})")
        if tables and not RELEASED <= min(tables) <= max(tables) < self.num_blocks:  # RELEASED: skipped
            raise RuntimeError(f"step inputs: a block outside [0, {self.num_blocks})")

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> tuple[torch.Tensor, list[Sequence]]:
        """One forward pass; returns float32 logits [N, V] for the N sequences that sample, and those sequences."""
        with trusted_calls(not self.check_kernel_args):
            return self._run(out)

    def _run(self, out: SchedulerOutput) -> tuple[torch.Tensor, list[Sequence]]:
        for src, dst in out.copies:  # copy-on-write of blocks shared by forked beams
            for k_cache, v_cache in self.kv_caches:
                k_cache[dst].copy_(k_cache[src])
                v_cache[dst].copy_(v_cache[src])
        if self._graph_step(out):
            return self._run_graph(out.decodes), list(out.decodes)
        tokens, positions, meta, rows, seqs = self._metadata(out)
        extra = () if not self.loaded.is_encoder_decoder else (self._cross(out),)
        hidden = self.model(tokens, positions, meta, self.kv_caches, *extra)
        self._prompt_logprobs(out, hidden)
        if not seqs:
            return torch.empty(0, device=self.device), []
        return self.model.logits(hidden.index_select(0, rows)), seqs

    def _graph_step(self, out: SchedulerOutput) -> bool:
        """Whether this step replays a decode graph: decodes only, within the largest bucket and width."""
        return (self.graphs is not None and not out.prefills and bool(out.decodes)
                and self.graphs.fits(len(out.decodes), max(len(s.block_table) for s in out.decodes)))

    def _run_graph(self, seqs: list[Sequence]) -> torch.Tensor:
        bs = self.block_size
        last = [len(s) - 1 for s in seqs]
        slots = [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, last)]
        tokens = [s.token_ids[-1] for s in seqs]
        self._check_step(tokens, [], slots)  # table entries are masked in the kernel, not read here
        return self.graphs.run(tokens, last, slots, [s.block_table for s in seqs],
                               [len(s) for s in seqs])

    def _prompt_logprobs(self, out: SchedulerOutput, hidden: torch.Tensor) -> None:
        """For prefill chunks of requests that asked for prompt logprobs: append to ``seq.prompt_logprobs``
        one (logprob, rank, top [(token, logprob)]) per prompt token after the first, from the logits at the
        position before it. A recompute after preemption adds nothing twice."""
        offset = 0  # one past the chunk's last row in ``hidden``
        for c in out.prefills:
            seq = c.seq
            offset += c.end - c.start
            want = seq.params.prompt_logprobs
            if want is None:
                continue
            # position p predicts token p + 1; prompt tokens 1 .. len(prompt) - 1 are owed, in order
            positions = range(max(c.start, len(seq.prompt_logprobs)), min(c.end, len(seq.prompt_token_ids) - 1))
            if not positions:
                continue
            rows = torch.tensor([offset - c.end + p for p in positions], device=self.device)
            logp = self.model.logits(hidden[rows]).float().log_softmax(-1)
            targets = torch.tensor([seq.prompt_token_ids[p + 1] for p in positions], device=self.device)
            picked = logp.gather(1, targets[:, None])[:, 0]
            ranks = ((logp > picked[:, None]).sum(-1) + 1).tolist()
            top_lps, top_ids = logp.topk(want, dim=-1) if want else (logp[:, :0], logp[:, :0].long())
            for lp, rank, ids, lps in zip(picked.tolist(), ranks, top_ids.tolist(), top_lps.tolist()):
                seq.prompt_logprobs.append((lp, rank, list(zip(ids, lps))))
