"""Shared fixtures for the kernel tests.

``impl`` runs each parity test twice: ``triton`` (the kernel, on CUDA or under
``TRITON_INTERPRET=1`` on the CPU; marked ``triton`` so ``make test`` can run
those in a separate interpreter process) and ``torch`` (the CPU serving path).
Both are checked against a float64 computation written as plainly as possible.
"""
from __future__ import annotations

import pytest
import torch

from kernels import _backend

# dtype -> (atol, rtol) against the float64 reference computed from the same
# (already rounded) inputs. fp32: accumulation-order noise only. fp16: one
# rounding of the output (2^-11) plus probabilities / intermediates rounded
# to fp16 before the second GEMM. bf16: the same with an 8-bit mantissa (2^-8).
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
# On a GPU, fp32 dots run on TF32 tensor cores (10-bit mantissa, like fp16);
# the interpreter's dots are exact numpy float32.
CUDA_TF32 = (2e-3, 2e-3)
DTYPES = list(TOLERANCES)


def triton_device() -> str | None:
    if torch.cuda.is_available() and not _backend.interpreting():
        return "cuda"
    if _backend.interpreting():
        return "cpu"
    return None


@pytest.fixture(params=[pytest.param("triton", marks=pytest.mark.triton), "torch"])
def impl(request):
    if request.param == "triton" and triton_device() is None:
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 (make test runs them in the interpreter)")
    return request.param


@pytest.fixture
def device(impl):
    return triton_device() if impl == "triton" else "cpu"


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, tf32: bool = True) -> None:
    """Compare with the float64 reference under the dtype's tolerance.

    ``tf32``: whether the op's fp32 path goes through ``tl.dot`` (TF32 on CUDA).
    """
    atol, rtol = TOLERANCES[dtype]
    if tf32 and dtype == torch.float32 and actual.device.type == "cuda":
        atol, rtol = CUDA_TF32
    assert actual.dtype == dtype, f"output dtype {actual.dtype}, expected {dtype}"
    assert not torch.isnan(actual).any(), "output has NaN"
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol)


def rand(*shape, dtype, device, scale=1.0, generator=None):
    return (torch.randn(*shape, generator=generator, dtype=torch.float32) * scale).to(dtype).to(device)


def cu_seqlens(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
