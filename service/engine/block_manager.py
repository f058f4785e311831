"""KV-cache blocks: allocation, reference counts and prefix caching. Plain Python, no tensors.

A full block is identified by a hash chained over the token prefix:
``h_i = hash((h_{i-1}, tokens of block i))``, so two sequences share block
``i`` only if their first ``(i+1) * block_size`` tokens are equal. Freed blocks
keep their hash and sit in an LRU list: a later request with the same prefix
reclaims them; allocation takes the least recently freed block first and
forgets its hash.

With a sliding window on every layer (Mistral v0.1, Phi-3), a block that every layer's window has passed is
read by no later query: it goes back to the pool (hash kept) and its table entry becomes ``RELEASED``, a block
index the attention kernels skip.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    token_ids: tuple[int, ...] = ()


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of those, found in the cache


class NoFreeBlocks(RuntimeError):
    pass


RELEASED = -1  # a block-table entry whose block went back behind a sliding window (attention skips it)


@dataclass
class BlockManager:
    num_blocks: int
    block_size: int
    enable_prefix_caching: bool = True
    blocks: list[Block] = field(init=False)
    free: OrderedDict = field(init=False)  # block_id -> None, least recently freed first
    by_hash: dict[int, int] = field(init=False)
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) block copies the runner owes
    # keys a query sees behind itself in every layer (window W: W - 1); None where some layer sees them all
    window_left: int | None = None

    def __post_init__(self):
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self.free = OrderedDict((i, None) for i in range(self.num_blocks))
        self.by_hash = {}

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """``child`` shares every block of ``parent`` (beam search); writes copy on demand."""
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.num_computed_tokens = parent.num_computed_tokens
        child.num_released_blocks = parent.num_released_blocks
        for block_id in child.block_table:
            if block_id != RELEASED:
                self.blocks[block_id].ref_count += 1

    def take_copies(self) -> list[tuple[int, int]]:
        copies, self.copies = self.copies, []
        return copies

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        return 1.0 - len(self.free) / self.num_blocks if self.num_blocks else 0.0

    def _chain_hashes(self, token_ids: list[int], prev: int | None = None, first: int = 0) -> list[int]:
        """Hashes of the full blocks of ``token_ids`` from block ``first`` on, chained from ``prev``."""
        hashes = []
        for start in range(first * self.block_size, len(token_ids) - self.block_size + 1, self.block_size):
            prev = hash((prev, tuple(token_ids[start:start + self.block_size])))
            hashes.append(prev)
        return hashes

    def _take_free(self) -> Block:
        if not self.free:
            raise NoFreeBlocks("no free KV-cache blocks")
        block = self.blocks[self.free.popitem(last=False)[0]]
        if block.hash is not None and self.by_hash.get(block.hash) == block.block_id:
            del self.by_hash[block.hash]
        block.hash, block.token_ids, block.ref_count = None, (), 1
        return block

    def _cached_block(self, h: int, tokens: tuple[int, ...]) -> Block | None:
        block_id = self.by_hash.get(h)
        if block_id is None or self.blocks[block_id].token_ids != tokens:
            return None  # the token check guards against hash collisions
        return self.blocks[block_id]

    def _reuse(self, block: Block) -> None:
        if block.ref_count == 0:
            del self.free[block.block_id]
        block.ref_count += 1

    def _cacheable_blocks(self, seq: Sequence) -> list[int]:
        # never take the whole sequence from the cache: the last token must be computed for its logits;
        # nor any of a prompt whose logprobs are still owed (every position's logits are needed)
        owed = seq.params.prompt_logprobs is not None and len(seq.prompt_logprobs) < len(seq.prompt_token_ids) - 1
        return self._chain_hashes(seq.token_ids[: len(seq) - 1]) if self.enable_prefix_caching and not owed else []

    def can_allocate(self, seq: Sequence) -> bool:
        """Whether ``allocate(seq)`` would succeed (cached prefix blocks cost nothing new)."""
        hits_free = 0
        hits = 0
        for i, h in enumerate(self._cacheable_blocks(seq)):
            block = self._cached_block(h, tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size]))
            if block is None:
                break
            hits += 1
            hits_free += block.ref_count == 0
        return seq.num_blocks_needed(self.block_size) - hits + hits_free <= len(self.free)

    def allocate(self, seq: Sequence) -> None:
        """Give ``seq`` blocks for all its tokens, reusing cached prefix blocks; sets its computed count."""
        assert not seq.block_table, "sequence already holds blocks"
        if not self.can_allocate(seq):
            raise NoFreeBlocks("not enough free KV-cache blocks")
        hashes = self._cacheable_blocks(seq)
        cached = 0
        for i, h in enumerate(hashes):
            tokens = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
            block = self._cached_block(h, tokens)
            if block is None:
                break
            self._reuse(block)
            seq.block_table.append(block.block_id)
            seq.block_hashes.append(h)
            cached += 1
        self.stats.queries += len(seq)
        self.stats.hits += cached * self.block_size
        for _ in range(cached, seq.num_blocks_needed(self.block_size)):
            seq.block_table.append(self._take_free().block_id)
        seq.num_computed_tokens = seq.num_cached_tokens = cached * self.block_size

    def _needs_block(self, seq: Sequence) -> bool:
        """Whether writing position ``len(seq) - 1`` takes a new block: past the last one, or a shared one."""
        index = (len(seq) - 1) // self.block_size
        return index >= len(seq.block_table) or self.blocks[seq.block_table[index]].ref_count > 1

    def can_append(self, seq: Sequence) -> bool:
        """Room for one more token (a new block only when the last one is full or shared)."""
        return not self._needs_block(seq) or bool(self.free)

    def append_slot(self, seq: Sequence) -> None:
        """Make room for the token at position ``len(seq) - 1`` (just appended).

        A block shared with a forked beam is copied first (copy-on-write); only the
        partly filled last block is ever written, so only it is copied.
        """
        index = (len(seq) - 1) // self.block_size
        if index >= len(seq.block_table):
            seq.block_table.append(self._take_free().block_id)
            return
        shared = self.blocks[seq.block_table[index]]
        if shared.ref_count > 1:
            fresh = self._take_free()
            self.copies.append((shared.block_id, fresh.block_id))
            shared.ref_count -= 1
            seq.block_table[index] = fresh.block_id

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of blocks whose K/V are now fully computed, for later requests."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        done = len(seq.block_hashes)
        if full <= done:
            return
        prev = seq.block_hashes[-1] if done else None
        new = self._chain_hashes(seq.token_ids[: full * self.block_size], prev, done)
        seq.block_hashes.extend(new)
        for i, h in enumerate(new, start=done):
            if seq.block_table[i] == RELEASED:
                continue
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self.by_hash:
                block.hash = h
                block.token_ids = tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])
                self.by_hash[h] = block.block_id

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        assert block.ref_count > 0, f"block {block_id} freed twice"
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free[block_id] = None

    def release_behind_window(self, seq: Sequence) -> None:
        """Return the leading blocks no later query of ``seq`` can see: queries start at position
        ``num_computed_tokens`` and see ``window_left`` keys behind them, so block ``i`` is done once
        ``(i + 1) * block_size <= num_computed_tokens - window_left``. The last block is always kept."""
        if self.window_left is None:
            return
        done = min((seq.num_computed_tokens - self.window_left) // self.block_size, len(seq.block_table) - 1)
        for i in range(seq.num_released_blocks, done):
            self._release(seq.block_table[i])
            seq.block_table[i] = RELEASED
        seq.num_released_blocks = max(seq.num_released_blocks, done)

    def free_sequence(self, seq: Sequence) -> None:
        """Return every block of ``seq``; blocks nobody uses go to the LRU free list (hash kept)."""
        for block_id in reversed(seq.block_table):
            if block_id != RELEASED:
                self._release(block_id)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
        seq.num_released_blocks = 0
