"""Block manager and scheduler without a model: plain Python over Sequence objects."""
from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from service.engine.block_manager import RELEASED, BlockManager
from service.engine.config import EngineConfig
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler
from service.engine.sequence import FinishReason, Sequence, Status

BS = 16


def seq(tokens, rid="r"):
    return Sequence(rid, 0, list(tokens), SamplingParams(max_tokens=1000))


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, BS)
    s = seq(range(40))  # 3 blocks
    bm.allocate(s)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    bm.free_sequence(s)
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_prefix_blocks_are_shared_by_content():
    bm = BlockManager(16, BS)
    a = seq(range(50), "a")
    bm.allocate(a)
    a.num_computed_tokens = 50
    bm.commit_full_blocks(a)
    b = seq(list(range(40)) + [999] * 10, "b")
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2], "the first two full blocks match"
    assert b.block_table[2] != a.block_table[2], "block 3 differs in content"
    assert b.num_computed_tokens == 32
    assert bm.blocks[a.block_table[0]].ref_count == 2


def test_prefix_cache_never_returns_another_prompts_blocks():
    bm = BlockManager(16, BS)
    a = seq(range(32), "a")
    bm.allocate(a)
    a.num_computed_tokens = 32
    bm.commit_full_blocks(a)
    c = seq([1] + list(range(1, 32)), "c")  # differs in the very first token
    bm.allocate(c)
    assert c.num_computed_tokens == 0 and not set(c.block_table) & set(a.block_table)


def test_whole_prompt_in_cache_still_computes_last_token():
    bm = BlockManager(16, BS)
    a = seq(range(32), "a")
    bm.allocate(a)
    a.num_computed_tokens = 32
    bm.commit_full_blocks(a)
    b = seq(range(32), "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 16 and b.num_uncomputed == 16


def test_blocks_behind_a_window_go_back_to_the_pool():
    bm = BlockManager(8, BS, window_left=7)  # a window of 8 tokens on every layer
    s = seq(range(40))  # 3 blocks
    bm.allocate(s)
    s.num_computed_tokens = 22  # later queries see keys from position 15 on: block 0 (0..15) is still needed
    bm.release_behind_window(s)
    assert RELEASED not in s.block_table and bm.num_free_blocks == 5
    s.num_computed_tokens = 40  # keys from 33 on: blocks 0 and 1 are behind every window
    kept = s.block_table[2]
    bm.release_behind_window(s)
    assert s.block_table == [RELEASED, RELEASED, kept] and bm.num_free_blocks == 7
    assert s.num_released_blocks == 2
    bm.release_behind_window(s)  # idempotent
    assert bm.num_free_blocks == 7
    bm.free_sequence(s)
    assert bm.num_free_blocks == 8 and s.num_released_blocks == 0
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_the_last_block_is_kept_and_no_window_releases_nothing():
    bm = BlockManager(8, BS, window_left=0)  # a window of one token: only the query itself
    s = seq(range(32))
    bm.allocate(s)
    s.num_computed_tokens = 32
    bm.release_behind_window(s)
    assert s.block_table[0] == RELEASED and s.block_table[1] != RELEASED  # block 1 is the last one
    full = BlockManager(8, BS)
    t = seq(range(40))
    full.allocate(t)
    t.num_computed_tokens = 40
    full.release_behind_window(t)
    assert RELEASED not in t.block_table and full.num_free_blocks == 5


def test_forks_share_only_the_blocks_still_held():
    bm = BlockManager(8, BS, window_left=7)
    parent = seq(range(40), "p")
    bm.allocate(parent)
    parent.num_computed_tokens = 40
    bm.release_behind_window(parent)
    child = seq(range(40), "c")
    bm.fork(parent, child)
    assert child.block_table == parent.block_table and child.num_released_blocks == 2
    assert bm.blocks[parent.block_table[2]].ref_count == 2 and bm.num_free_blocks == 7
    bm.free_sequence(parent)
    bm.free_sequence(child)
    assert bm.num_free_blocks == 8


def test_released_blocks_stay_in_the_prefix_cache():
    bm = BlockManager(8, BS, window_left=7)
    a = seq(range(40), "a")
    bm.allocate(a)
    a.num_computed_tokens = 40
    bm.commit_full_blocks(a)
    first_two = a.block_table[:2]
    bm.release_behind_window(a)
    b = seq(list(range(32)) + [500] * 5, "b")  # the same first two blocks
    bm.allocate(b)
    assert b.block_table[:2] == first_two and b.num_cached_tokens == 32


def test_freed_cached_blocks_are_reused_lru():
    bm = BlockManager(4, BS)
    a = seq(range(32), "a")
    bm.allocate(a)
    a.num_computed_tokens = 32
    bm.commit_full_blocks(a)
    bm.free_sequence(a)
    again = seq(list(range(32)) + [5], "again")
    bm.allocate(again)
    assert again.num_computed_tokens == 32  # both blocks found while free
    assert bm.stats.hits == 32


def make_scheduler(num_blocks=8, max_seqs=4, max_tokens=64):
    cfg = EngineConfig(max_num_seqs=max_seqs, max_num_batched_tokens=max_tokens, block_size=BS)
    return Scheduler(cfg, BlockManager(num_blocks, BS))


def test_chunked_prefill_respects_the_token_budget():
    sch = make_scheduler(num_blocks=16, max_tokens=40)
    s = seq(range(100))
    sch.add(s)
    out = sch.schedule()
    assert [(c.start, c.end) for c in out.prefills] == [(0, 40)] and not out.prefills[0].samples
    sch.computed(out)
    out = sch.schedule()
    assert [(c.start, c.end) for c in out.prefills] == [(40, 80)]


def test_preemption_frees_the_newest_and_requeues_it_first():
    sch = make_scheduler(num_blocks=4, max_tokens=200)
    a, b = seq(range(32), "a"), seq(range(100, 132), "b")
    for s in (a, b):
        sch.add(s)
    out = sch.schedule()
    sch.computed(out)
    for s in (a, b):
        s.output_token_ids.append(7)  # each now needs a third block; only 0 free
    out = sch.schedule()
    assert out.preempted == [b] and out.decodes == [a]
    assert b.status is Status.WAITING and sch.waiting[0] is b and b.block_table == []


def test_finish_returns_blocks():
    sch = make_scheduler()
    s = seq(range(20))
    sch.add(s)
    sch.computed(sch.schedule())
    sch.finish(s, FinishReason.ABORT)
    assert sch.blocks.num_free_blocks == 8 and s.finished


class SchedulerMachine(RuleBasedStateMachine):
    """Random interleavings of add / step / abort / finish; blocks are never leaked, double-freed or mis-shared."""

    def __init__(self):
        super().__init__()
        self.sch = make_scheduler(num_blocks=12, max_seqs=3, max_tokens=48)
        self.live: list[Sequence] = []
        self.n = 0

    @rule(length=st.integers(1, 70), prefix=st.sampled_from([0, 1, 2]))
    def add(self, length, prefix):
        # shared prefixes exercise the cache; the id keeps contents distinct otherwise
        tokens = [prefix] * 16 * prefix + [1000 + self.n] * length
        if len(tokens) > 12 * BS - 20:
            return
        s = seq(tokens, f"r{self.n}")
        self.n += 1
        self.sch.add(s)
        self.live.append(s)

    @rule()
    def step(self):
        out = self.sch.schedule()
        self.sch.computed(out)
        for c in out.prefills:
            if c.samples:
                c.seq.output_token_ids.append(5)
        for s in out.decodes:
            s.output_token_ids.append(6)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 100), reason=st.sampled_from([FinishReason.ABORT, FinishReason.STOP]))
    def finish(self, i, reason):
        s = self.live.pop(i % len(self.live))
        self.sch.finish(s, reason)

    @invariant()
    def blocks_accounted(self):
        bm = self.sch.blocks
        held: dict[int, int] = {}
        for s in self.sch.running:
            assert len(set(s.block_table)) == len(s.block_table), "a sequence holds a block twice"
            for b in s.block_table:
                held[b] = held.get(b, 0) + 1
        for s in self.live:
            if s.status is not Status.RUNNING:
                assert s.block_table == []
        for block in bm.blocks:
            assert block.ref_count == held.get(block.block_id, 0), f"block {block.block_id} refcount"
            assert (block.ref_count == 0) == (block.block_id in bm.free)
        assert bm.num_free_blocks + len(held) == bm.num_blocks

    @invariant()
    def shared_blocks_hold_equal_prefixes(self):
        bs = self.sch.blocks.block_size
        owners: dict[int, tuple] = {}
        for s in self.sch.running:
            for i, b in enumerate(s.block_table[: s.num_computed_tokens // bs]):
                prefix = tuple(s.token_ids[: (i + 1) * bs])
                assert owners.setdefault(b, prefix) == prefix, "a cached block served another prompt"


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
