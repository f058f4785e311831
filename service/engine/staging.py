"""One host-to-device copy for a step's small tensors.

A step's inputs are many short Python lists (token ids, positions, slots, sequence lengths, block tables,
sampling parameters). Sent one ``torch.tensor(..., device="cuda")`` at a time, each list is a copy from
pageable memory, which CUDA runs synchronously with the stream: the host waits for the GPU's queue to
drain once per list. :class:`Staging` writes the lists into one pinned host buffer and sends it in one
asynchronous copy; the tensors handed out are views of the device copy. On the CPU it is one
``torch.tensor`` and views of it.
"""
from __future__ import annotations

from itertools import chain
from typing import Sequence

import torch


class Staging:
    """Sends lists of numbers to ``device`` as ``dtype`` tensors, one copy per :meth:`send`."""

    def __init__(self, device: torch.device | str, dtype: torch.dtype):
        self.device, self.dtype = torch.device(device), dtype
        self.pinned = self.device.type == "cuda"
        self.host: torch.Tensor | None = None  # pinned, grown on demand
        self.sent = None  # CUDA event: the last copy out of ``host`` has finished once it completes

    def send(self, *parts: Sequence[float]) -> list[torch.Tensor]:
        """One 1-D device tensor per part (views of one buffer, so do not write into them)."""
        if not parts:
            return []
        lengths = [len(p) for p in parts]
        flat = torch.tensor(list(chain.from_iterable(parts)), dtype=self.dtype)
        if self.pinned:
            flat = self._copy_to_device(flat)
        return list(flat.split(lengths))

    def _copy_to_device(self, flat: torch.Tensor) -> torch.Tensor:
        n = flat.numel()
        if self.sent is not None:  # the previous copy may still be reading the buffer we are about to fill
            self.sent.synchronize()
        if self.host is None or self.host.numel() < n:
            self.host = torch.empty(max(n, 2 * (0 if self.host is None else self.host.numel()), 256),
                                    dtype=self.dtype, pin_memory=True)
        self.host[:n].copy_(flat)
        out = self.host[:n].to(self.device, non_blocking=True)
        self.sent = torch.cuda.Event()
        self.sent.record()
        return out
