"""Precondition checks shared by the kernel launchers.

Every check raises ``ValueError`` naming the argument and what was expected, so
a bad call fails loudly in Python instead of reading out of bounds in a kernel.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


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
    expect(isinstance(t, torch.Tensor), f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    assert isinstance(t, torch.Tensor)
    if ndim is not None:
        expect(t.dim() == ndim, f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        expect(t.dtype in dtypes, f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if device is not None:
        expect(t.device == device, f"{name}: expected a tensor on {device}, got one on {t.device}")
    if last_dim_contiguous and t.dim() > 0 and t.shape[-1] > 1:
        expect(t.stride(-1) == 1, f"{name}: the last dimension must be contiguous (stride 1), got strides {t.stride()}")


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int | None]) -> None:
    """Check ``t.shape`` against ``shape``, where ``None`` matches any size."""
    ok = t.dim() == len(shape) and all(s is None or s == d for s, d in zip(shape, t.shape))
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    expect(ok, f"{name}: expected shape {want}, got {list(t.shape)}")


def check_same_dtype(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    dtypes = {t.dtype for t in tensors}
    expect(len(dtypes) == 1, f"{', '.join(names)}: expected one dtype, got {[str(t.dtype) for t in tensors]}")


def check_cu_seqlens(name: str, cu: torch.Tensor, total: int, max_seqlen: int, device: torch.device) -> list[int]:
    """Validate cumulative sequence lengths and return them as a Python list.

    Needs the values on the host: one small device-to-host copy on CUDA.
    """
    check_tensor(name, cu, ndim=1, dtypes=(torch.int32,), device=device)
    expect(cu.numel() >= 1, f"{name}: expected at least one entry [0], got an empty tensor")
    values = cu.tolist()
    expect(values[0] == 0, f"{name}: must start at 0, got {values[0]}")
    lengths = [b - a for a, b in zip(values, values[1:])]
    expect(all(n >= 0 for n in lengths), f"{name}: must be non-decreasing, got {values}")
    expect(values[-1] == total, f"{name}: last entry must equal the packed length {total}, got {values[-1]}")
    longest = max(lengths, default=0)
    expect(longest <= max_seqlen, f"{name}: holds a sequence of {longest} tokens, longer than max_seqlen={max_seqlen}")
    return values
