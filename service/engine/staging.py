"""One host-to-device copy for a step's small tensors.

A step's inputs are many short Python lists (token ids, positions, slots, sequence lengths, block tables,
sampling parameters). Sent one ``torch.tensor(..., device="cuda")`` at a time, each list is a copy from
pageable memory, which CUDA runs synchronously with the stream: the host waits for the GPU's queue to
drain once per list. :class:`Staging` writes the lists into one pinned host buffer and sends it in one
asynchronous copy; the tensors handed out are views of the device copy. On the CPU it is one
``torch.tensor`` and views of it.
"""
from __future__ import annotations

from itertools import accumulate, chain
from typing import Sequence

import torch


ALIGN_BYTES = 16  # what Triton specialises pointers on


class Staging:
    """Sends lists of numbers to ``device`` as ``dtype`` tensors, one copy per :meth:`send`."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype):
        self.device, self.dtype = torch.device(device), dtype
        self.pinned = self.device.type == "cuda"
        self.host: torch.Tensor | None = None  # pinned, grown on demand
        self.fence = CopyFence(self.device)  # the last copy out of ``host``
        self.align = max(1, ALIGN_BYTES // torch.empty(0, dtype=dtype).element_size())  # elements

    def send(self, *parts: Sequence[float]) -> list[torch.Tensor]:
        """One 1-D device tensor per part (views of one buffer, so do not write into them). Each part starts at
        a multiple of 16 bytes into the buffer: a kernel's pointer arguments are then aligned every step
        (Triton compiles a kernel per alignment of its pointers: an unaligned step would compile anew)."""
        if not parts:
            return []
        padded = [-(-len(p) // self.align) * self.align for p in parts]
        flat = torch.tensor(list(chain.from_iterable(list(p) + [0] * (n - len(p)) for p, n in zip(parts, padded))),
                            dtype=self.dtype)
        if self.pinned:
            flat = self._copy_to_device(flat)
        starts = [0, *accumulate(padded)]
        return [flat[start:start + len(p)] for start, p in zip(starts, parts)]

    def _copy_to_device(self, flat: torch.Tensor) -> torch.Tensor:
        n = flat.numel()
        self.fence.wait()  # the previous copy may still be reading the buffer we are about to fill
        if self.host is None or self.host.numel() < n:
            self.host = torch.empty(max(n, 2 * (0 if self.host is None else self.host.numel()), 256),
                                    dtype=self.dtype, pin_memory=True)
        self.host[:n].copy_(flat)
        out = self.host[:n].to(self.device, non_blocking=True)
        self.fence.record()
        return out


class CopyFence:
    """Whether the last asynchronous copy out of a pinned host buffer has finished: :meth:`wait` before
    refilling the buffer, :meth:`record` right after queueing a copy out of it. A ``non_blocking`` copy from
    pinned memory runs when the stream reaches it, so refilling the buffer before then changes what the
    device receives. On the CPU copies are synchronous and there is nothing to wait for."""

    def __init__(self, device: torch.device | str):
        self.cuda = torch.device(device).type == "cuda"
        self._event = None

    def record(self) -> None:
        if self.cuda:
            self._event = torch.cuda.Event()
            self._event.record()

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()
            self._event = None
