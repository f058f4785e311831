"""Iteration-level (continuous) batching. Plain Python over Sequence objects; no tensors.

Every step the scheduler spends a budget of ``max_num_batched_tokens``:
first one token for each running sequence that is decoding (and the next
chunk of each running sequence still prefilling), then the waiting queue in
arrival order as (chunked) prefills, up to ``max_num_seqs`` running. When a
decoding sequence needs a block and none is free, the most recently admitted
running sequence is preempted: its blocks are freed and it goes back to the
front of the queue, to be recomputed (prompt + what it generated so far).
Under the "priority" policy the queue is served by (priority, arrival) instead,
and the running sequence with the largest (priority, arrival) is preempted.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .config import EngineConfig
from .sequence import FinishReason, Sequence, Status


@dataclass
class ScheduledChunk:
    seq: Sequence
    start: int  # first token position computed this step
    end: int  # one past the last

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the end of the sequence, so its last logits are sampled."""
        return self.end == len(self.seq)


@dataclass
class SchedulerOutput:
    prefills: list[ScheduledChunk] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # KV blocks to copy before the forward (src, dst)

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decodes

    @property
    def num_tokens(self) -> int:
        return sum(c.end - c.start for c in self.prefills) + len(self.decodes)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager):
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(out, budget)
        if not out.preempted:  # a step that had to preempt admits nobody new
            self._schedule_waiting(out, budget)
        out.copies = self.blocks.take_copies()
        return out

    def add_running(self, seq: Sequence) -> None:
        """A sequence forked from a running one (beam search) joins the running set directly."""
        seq.status = Status.RUNNING
        self.running.append(seq)

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        for seq in list(self.running):
            if seq not in self.running or budget == 0 or seq.paused:
                continue  # preempted earlier in this loop, out of budget, or a beam waiting for its group
            if seq.is_prefilling:
                n = min(seq.num_uncomputed, budget)
                out.prefills.append(ScheduledChunk(seq, seq.num_computed_tokens, seq.num_computed_tokens + n))
                budget -= n
                continue
            while not self.blocks.can_append(seq):
                victim = self._victim()
                self._preempt(victim, out)
                if victim is seq:
                    break
            if seq.status is Status.RUNNING:
                self.blocks.append_slot(seq)
                out.decodes.append(seq)
                budget -= 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while budget > 0 and len(self.running) < self.config.max_num_seqs:
            # nobody overtakes the head of the queue (paused beams wait for their group)
            seq = self._next_waiting()
            if seq is None or not self.blocks.can_allocate(seq):
                break
            self.waiting.remove(seq)
            self.blocks.allocate(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            n = min(seq.num_uncomputed, budget)
            out.prefills.append(ScheduledChunk(seq, seq.num_computed_tokens, seq.num_computed_tokens + n))
            budget -= n

    def _by_priority(self, seq: Sequence) -> tuple[int, float]:
        return seq.params.priority, seq.arrival_time

    def _next_waiting(self) -> Sequence | None:
        ready = [s for s in self.waiting if not s.paused]
        if self.config.scheduling_policy == "priority":
            return min(ready, key=self._by_priority, default=None)
        return ready[0] if ready else None

    def _victim(self) -> Sequence:
        if self.config.scheduling_policy == "priority":
            return max(reversed(self.running), key=self._by_priority)  # ties: the latest admitted
        return self.running[-1]

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.blocks.free_sequence(seq)
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        out.prefills = [c for c in out.prefills if c.seq is not seq]
        out.decodes = [s for s in out.decodes if s is not seq]

    def computed(self, out: SchedulerOutput) -> None:
        """After the forward pass: the scheduled tokens now have K/V in the cache."""
        for chunk in out.prefills:
            chunk.seq.num_computed_tokens = chunk.end
            self.blocks.commit_full_blocks(chunk.seq)
            self.blocks.release_behind_window(chunk.seq)
        for seq in out.decodes:
            seq.num_computed_tokens = len(seq)
            self.blocks.commit_full_blocks(seq)
            self.blocks.release_behind_window(seq)

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        """Retire ``seq`` (finished or aborted) and return its blocks."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self.blocks.free_sequence(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        seq.finish_reason = reason
