"""A CPU model's weights in one buffer backed by transparent huge pages (THP).

A decode step reads every weight once (SmolLM2-135M Q4_1: ~98 MB a token), a stream far wider than what the
TLB covers in 4 KiB pages: each new page costs a page walk and stops the hardware prefetcher. In 2 MiB pages
the same stream of quantized GEMMs ran ~10% faster on the 2-core VM (NOTES.md, "CPU kernels"). Linux only, and
only where THP is ``always`` or ``madvise`` (``/sys/kernel/mm/transparent_hugepage/enabled``); elsewhere, or
with ``KERNELSERVE_HUGE_PAGES=0``, the weights stay where they are.

The KV cache is placed the same way (:func:`zeros`). The buffer is advised (``madvise(MADV_HUGEPAGE)``) before anything is written to it, so its pages are huge from
their first touch; no copy of a weight outlives the move (peak: one extra copy while it runs).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

import torch
from torch import nn

from .layers import QuantizedLinear

log = logging.getLogger("kernelserve.models")

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # <linux/mman.h>
ALIGN = 64  # every tensor starts on a cache line


def thp_mode() -> str | None:
    """The kernel's THP setting (``always``, ``madvise`` or ``never``), None where there is none."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def enabled() -> bool:
    return (sys.platform == "linux" and os.environ.get("KERNELSERVE_HUGE_PAGES", "1") != "0"
            and thp_mode() in ("always", "madvise"))


def _advise(addr: int, length: int) -> bool:
    libc = _libc()
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.madvise(addr, length, MADV_HUGEPAGE) != 0:
        log.debug("madvise(MADV_HUGEPAGE) failed: errno %d", ctypes.get_errno())
        return False
    return True


@functools.cache
def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _release_freed_heap() -> None:
    """Hand the weights' old pages back to the OS: glibc keeps freed heap memory (weights loaded in pieces below
    its mmap threshold land there) until ``malloc_trim``."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def huge_page_buffer(nbytes: int) -> torch.Tensor:
    """``nbytes`` of uint8 starting on a huge-page boundary, advised before its first touch."""
    span = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    raw = torch.empty(span + HUGE_PAGE, dtype=torch.uint8)  # not touched yet: torch.empty does not write
    start = -raw.data_ptr() % HUGE_PAGE
    _advise(raw.data_ptr() + start, span)
    return raw[start:start + nbytes]


def zeros(shape: tuple[int, ...], dtype: torch.dtype, count: int) -> list[torch.Tensor]:
    """``count`` zero tensors of ``shape`` side by side in one huge-page buffer (torch.zeros where huge pages
    are not available): the KV cache, read once a step by decode attention as the weights are."""
    if not enabled():
        return [torch.zeros(shape, dtype=dtype) for _ in range(count)]
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    each = -(-nbytes // ALIGN) * ALIGN
    arena = huge_page_buffer(each * count).zero_()
    return [arena[i * each:i * each + nbytes].view(dtype).view(shape) for i in range(count)]


def _slots(module: nn.Module) -> list[tuple[nn.Module, str, bool, torch.Tensor]]:
    """(owner, name, is_parameter, tensor) of every CPU parameter and buffer worth moving."""
    out = []
    for owner in module.modules():
        for table, is_param in ((owner._parameters, True), (owner._buffers, False)):
            for name, t in table.items():
                if t is not None and t.device.type == "cpu" and t.numel() and t.is_contiguous():
                    out.append((owner, name, is_param, t))
    return out


def place_in_huge_pages(module: nn.Module) -> int:
    """Move every (contiguous, CPU) parameter and buffer of ``module`` into one huge-page buffer, in place:
    the same Parameter objects, the same values, tied tensors still shared. Returns the bytes moved (0 where
    huge pages are not available)."""
    if not enabled():
        return 0
    slots = [(owner, name, is_param, t, (t.data_ptr(), t.dtype, tuple(t.shape)))
             for owner, name, is_param, t in _slots(module)]  # keys first: rebinding a tied Parameter moves it
    # tensors that are different views of one storage stay where they are (moving them would unshare them)
    views: dict[int, set] = {}
    for *_, t, key in slots:
        views.setdefault(t.untyped_storage().data_ptr(), set()).add(key)
    slots = [s for s in slots if len(views[s[3].untyped_storage().data_ptr()]) == 1]
    offsets: dict[tuple, int] = {}  # one copy of each distinct tensor (tied weights share one key)
    total = 0
    for *_, t, key in slots:
        if key not in offsets:
            offsets[key] = total
            total += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    if not total:
        return 0
    arena = huge_page_buffer(total)
    moved: dict[tuple, torch.Tensor] = {}
    for owner, name, is_param, t, key in slots:
        if key not in moved:
            start = offsets[key]
            view = arena[start:start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
            moved[key] = view.copy_(t)
        if is_param:
            owner._parameters[name].data = moved[key]
        else:
            owner._buffers[name] = moved[key]
    for m in module.modules():
        if isinstance(m, QuantizedLinear):
            m.weight  # rebuilds its QuantizedWeight over the moved buffers, dropping the old tensors
    del slots, t
    _release_freed_heap()
    log.debug("%.1f MiB of weights in huge pages", total / 2**20)
    return total
