"""Sequences and their states. Plain Python: the scheduler and block manager work on these."""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

from .grammar import GrammarState
from .sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishReason(str, enum.Enum):
    STOP = "stop"  # EOS, a stop token or a stop string
    LENGTH = "length"  # max_tokens or the model's context
    ABORT = "abort"  # cancelled by the client
    ERROR = "error"  # failed inside the engine (the other requests go on)


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    """One generation stream: its tokens, how many have K/V in the cache, and its blocks."""
    request_id: str
    index: int  # position among the request's n sequences
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float = 0.0
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # prefix-chain hashes of its full, computed blocks
    num_released_blocks: int = 0  # leading blocks returned behind a sliding window (their entries RELEASED)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_tokens: int = 0  # of those, how many came from the prefix cache at admission
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    encoder_token_ids: list[int] | None = None  # encoder-decoders: the encoder input (the "prompt")
    paused: bool = False  # beam search: logits taken, waiting for the other beams' before the next token
    grammar: GrammarState | None = None  # structured outputs: where the output is in its grammar
    prompt_logprobs: list = field(default_factory=list)  # prompt_logprobs: one entry per prompt token so far

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def __len__(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed(self) -> int:
        return len(self) - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        """More than the last token still needs computing (a prompt, or a recompute after preemption)."""
        return self.num_uncomputed > 1 or not self.output_token_ids

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def num_blocks_needed(self, block_size: int, tokens: int | None = None) -> int:
        tokens = len(self) if tokens is None else tokens
        return -(-tokens // block_size)
