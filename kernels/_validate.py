"""Precondition checks shared by the kernel launchers.

Every check raises ``ValueError`` naming the argument and what was expected, so
a bad call fails loudly in Python instead of reading out of bounds in a kernel.
"""
from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Launchers check their arguments on every call (types, shapes, dtypes, devices; a few microseconds of
# Python each, ~10 calls a layer). A caller that builds the arguments itself and checks its inputs once per
# step (the engine's model runner) may vouch for them with trusted_calls(): the launchers then skip their
# checks. KERNELSERVE_CHECK_ARGS=always keeps the checks on there too (debugging).
CHECK_ARGS_ENV = "KERNELSERVE_CHECK_ARGS"
_TRUSTED = contextvars.ContextVar("kernelserve_trusted_calls", default=False)


def checking() -> bool:
    """Whether launchers check their arguments now (always, outside :func:`trusted_calls`)."""
    return not _TRUSTED.get()


@contextmanager
def trusted_calls(trusted: bool = True) -> Iterator[None]:
    """Within, launchers skip their argument checks (``trusted=False``: check, even inside an outer one).
    The kernels still mask every index outside its tensor, so a wrong index never reads out of bounds."""
    mode = os.environ.get(CHECK_ARGS_ENV, "auto").strip().lower()
    if mode not in ("auto", "always"):
        raise ValueError(f"{CHECK_ARGS_ENV}={mode!r}: expected auto or always")
    token = _TRUSTED.set(trusted and mode != "always")
    try:
        yield
    finally:
        _TRUSTED.reset(token)

# Index arguments (block tables, slots, positions) hold values a kernel dereferences. Kernels mask every
# index outside its tensor (the entry is skipped, never read out of bounds). Launchers also check the
# values and raise ValueError: always for CPU tensors; for device tensors only with
# KERNELSERVE_CHECK_INDICES=always, since reading them back costs a device sync on every call.
# "never" skips the check everywhere (tests of the kernels' own masking).
CHECK_INDICES_ENV = "KERNELSERVE_CHECK_INDICES"


def check_indices(t: torch.Tensor) -> bool:
    """Whether to validate the values of index tensor ``t`` on the host now."""
    mode = os.environ.get(CHECK_INDICES_ENV, "auto").strip().lower()
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"{CHECK_INDICES_ENV}={mode!r}: expected auto, always or never")
    return t.numel() > 0 and (mode == "always" or (mode == "auto" and t.device.type == "cpu"))


def expect(condition: bool, message: str | Callable[[], str]) -> None:
    """Raise ``ValueError(message)`` unless ``condition``; a callable message is formatted only then
    (these checks run on every kernel call, so the happy path must not format strings)."""
    if not condition:
        raise ValueError(message() if callable(message) else message)


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = None,
    dtypes: Iterable[torch.dtype] | None = None,
    device: torch.device | None = None,
    last_dim_contiguous: bool = True,
) -> None:
    """Check one tensor argument: type, rank, dtype, device and unit inner stride."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {t.stride()}")


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int | None]) -> None:
    """Check ``t.shape`` against ``shape``, where ``None`` matches any size."""
    if t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape)):
        return
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    raise ValueError(f"{name}: expected shape {want}, got {list(t.shape)}")


def check_same_dtype(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    first = tensors[0].dtype
    if any(t.dtype != first for t in tensors):
        raise ValueError(f"{', '.join(names)}: expected one dtype, got {[str(t.dtype) for t in tensors]}")


def check_cu_seqlens(name: str, cu: torch.Tensor, total: int, max_seqlen: int, device: torch.device) -> int:
    """Validate cumulative sequence lengths; returns the number of sequences.

    The values are checked when :func:`check_indices` says so (CPU tensors, or ``always``): on CUDA that
    would be a device-to-host read per call (per layer), so there the kernel clamps them into the packed
    tensor instead (an out-of-range entry shortens that sequence, never reads past the tensor).
    """
    check_tensor(name, cu, ndim=1, dtypes=(torch.int32,), device=device)
    expect(cu.numel() >= 1, lambda: f"{name}: expected at least one entry [0], got an empty tensor")
    if not check_indices(cu):
        return cu.numel() - 1
    values = cu.tolist()
    expect(values[0] == 0, lambda: f"{name}: must start at 0, got {values[0]}")
    lengths = [b - a for a, b in zip(values, values[1:])]
    expect(all(n >= 0 for n in lengths), lambda: f"{name}: must be non-decreasing, got {values}")
    expect(values[-1] == total, lambda: f"{name}: last entry must equal the packed length {total}, got {values[-1]}")
    longest = max(lengths, default=0)
    expect(longest <= max_seqlen, lambda: f"{name}: holds a sequence of {longest} tokens, longer than max_seqlen={max_seqlen}")
    return len(values) - 1
