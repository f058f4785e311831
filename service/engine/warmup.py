"""Warm-up: before ``ready``, run every shape the engine can schedule, so nothing compiles or tunes later.

A step's GEMMs are tuned per power-of-two token bucket (kernels/tuning.py) and Triton compiles a kernel
per specialisation, so the plan visits:
- a prefill of every token bucket 1, 2, 4, ... up to ``max_num_batched_tokens`` (split into sequences no
  longer than the model allows), which also covers the varlen attention kernel;
- a decode step of every batch bucket of the CUDA graphs (1, 2, 4, 8, 16, 24, ... ``max_num_seqs``),
  which covers the paged decode kernel;
then the decode graphs are captured. The forwards write K/V into cache blocks nobody holds yet (every
block is free at start-up; a block is always written before it is read), so no state survives it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from kernels.tuning import m_buckets

from .config import EngineConfig
from .cuda_graphs import graph_batch_sizes
from .sampling_params import SamplingParams
from .scheduler import ScheduledChunk, SchedulerOutput
from .sequence import Sequence

log = logging.getLogger("kernelserve.engine")


@dataclass(frozen=True)
class WarmupPlan:
    prefill_tokens: tuple[int, ...]  # one step of each of these many prompt tokens
    decode_batches: tuple[int, ...]  # one decode step of each of these many sequences

    @staticmethod
    def for_engine(config: EngineConfig) -> "WarmupPlan":
        tokens = tuple(m_buckets(config.max_num_batched_tokens))
        tokens = tuple(t for t in tokens if t <= config.max_num_batched_tokens) + (
            (config.max_num_batched_tokens,) if config.max_num_batched_tokens not in tokens else ())
        batches = tuple(b for b in graph_batch_sizes(config.max_num_seqs) if b <= config.max_num_seqs)
        if config.max_num_seqs not in batches:
            batches += (config.max_num_seqs,)
        return WarmupPlan(tokens, batches)


def _scratch(length: int, first_block: int, num_blocks: int, block_size: int, encoder: bool) -> Sequence:
    seq = Sequence("warmup", 0, [0] * length, SamplingParams(max_tokens=1),
                   encoder_token_ids=[0] * 8 if encoder else None)
    seq.block_table = [(first_block + i) % num_blocks for i in range(-(-length // block_size))]
    return seq


def prefill_steps(total: int, max_model_len: int) -> list[int]:
    """Sequence lengths of one prefill step of ``total`` tokens, none longer than the model allows."""
    longest = max(1, max_model_len - 1)
    return [longest] * (total // longest) + ([total % longest] if total % longest else [])


def run_plan(runner, plan: WarmupPlan, max_model_len: int, num_blocks: int, block_size: int) -> dict:
    """Run ``plan``'s forwards through ``runner`` (and its graph path); returns timings in seconds."""
    encoder = runner.loaded.is_encoder_decoder
    timings = {}
    runner.check_kernel_args = True  # every shape the plan runs has its kernel arguments checked once
    try:
        _run_forwards(runner, plan, max_model_len, num_blocks, block_size, encoder, timings)
    finally:
        runner.check_kernel_args = False
    if runner.graphs is not None:
        timings["graphs"] = runner.graphs.capture_all()
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    log.info("%s: warmed up %d prefill and %d decode shapes (%.1f s prefill, %.1f s decode, %.1f s graphs)",
             runner.loaded.name, len(plan.prefill_tokens), len(plan.decode_batches), timings["prefill"],
             timings["decode"], timings.get("graphs", 0.0))
    return timings


def _run_forwards(runner, plan: WarmupPlan, max_model_len: int, num_blocks: int, block_size: int, encoder: bool,
                  timings: dict) -> None:
    start = time.perf_counter()
    for total in plan.prefill_tokens:
        seqs, block = [], 0
        for n in prefill_steps(total, max_model_len):
            seqs.append(_scratch(n, block, num_blocks, block_size, encoder))
            block += len(seqs[-1].block_table)
        runner.run(SchedulerOutput(prefills=[ScheduledChunk(s, 0, len(s)) for s in seqs]))
        for s in seqs:
            runner.release(s)
    timings["prefill"] = time.perf_counter() - start
    start = time.perf_counter()
    for batch in plan.decode_batches:
        seqs = []
        for i in range(batch):
            seq = _scratch(1, i, num_blocks, block_size, encoder)
            seq.output_token_ids.append(0)  # one prompt token computed, one new token to decode
            seq.num_computed_tokens = 1
            seqs.append(seq)
        if encoder:
            runner.run(SchedulerOutput(prefills=[ScheduledChunk(s, 0, 1) for s in seqs]))  # cross K/V
        runner.run(SchedulerOutput(decodes=seqs))
        for s in seqs:
            runner.release(s)
    timings["decode"] = time.perf_counter() - start
