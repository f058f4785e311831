"""Shared fixtures for the kernel tests.

``impl`` runs each parity test twice: ``triton`` (the kernel, on CUDA or under
``TRITON_INTERPRET=1`` on the CPU; marked ``triton`` so ``make test`` can run
those in a separate interpreter process) and ``torch`` (the CPU serving path).
Both are checked against a float64 computation written as plainly as possible.
"""
from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch

from kernels import _backend
from kernels import cpu as cpu_kernels

# dtype -> (atol, rtol) against the float64 reference computed from the same
# (already rounded) inputs. fp32: accumulation-order noise only. fp16: one
# rounding of the output (2^-11) plus probabilities / intermediates rounded
# to fp16 before the second GEMM. bf16: the same with an 8-bit mantissa (2^-8).
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
DTYPES = list(TOLERANCES)
# On a GPU, fp32 dots run on TF32 tensor cores: each operand is rounded to 11 significant bits (relative
# error uniform in +-2^-11); the interpreter's dots are exact numpy float32.
TF32_UNIT = 2.0 ** -11


def tf32_tolerance(dot_rms: float) -> tuple[float, float]:
    """(atol, rtol) for an fp32 result of TF32 dots whose exact values have RMS ``dot_rms``.

    A dot of K terms x_i w_i, both operands rounded: error sum_i x_i w_i (e_xi + e_wi), a sum of K
    independent terms with RMS sqrt(2/3) 2^-11 |x_i w_i|, so RMS sqrt(2/3) 2^-11 dot_rms (dot_rms =
    sqrt(K) rms(x) rms(w): it grows with the reduction length). Six of those bound the largest error of
    the thousands of outputs a test compares, plus one TF32 rounding of the result itself.
    Attention: the score error (dot_rms = scale sqrt(d)) reaches the output through softmax weights
    times values of RMS 1, and P V's own dot (weights summing to one) adds dot_rms 1.
    """
    atol = 6 * math.sqrt(2 / 3) * TF32_UNIT * dot_rms + TF32_UNIT
    return atol, 2 * TF32_UNIT


def attention_dot_rms(scale: float, head_dim: int) -> float:
    """``tf32_tolerance``'s dot_rms for attention with unit-variance q, k, v (see there)."""
    return 1 + scale * math.sqrt(head_dim)


def triton_device() -> str | None:
    if torch.cuda.is_available() and not _backend.interpreting():
        return "cuda"
    if _backend.interpreting():
        return "cpu"
    return None


def pytest_generate_tests(metafunc):
    """``impl``: ``triton`` and ``torch`` for every kernel test, and ``cpp`` (kernelserve's C++ CPU kernels,
    kernels/cpu) in the modules that declare ``CPP_KERNELS = True`` (their kernels have a C++ twin)."""
    if "impl" in metafunc.fixturenames:
        params = [pytest.param("triton", marks=pytest.mark.triton), "torch"]
        if getattr(metafunc.module, "CPP_KERNELS", False):
            params.append("cpp")
        metafunc.parametrize("impl", params, indirect=True)


@pytest.fixture
def impl(request):
    if request.param == "triton" and triton_device() is None:
        pytest.skip("Triton kernels need CUDA or TRITON_INTERPRET=1 (make test runs them in the interpreter)")
    if request.param == "cpp" and not cpu_kernels.available():
        pytest.skip(f"kernelserve's C++ CPU kernels are not built here: {cpu_kernels._state.get('error')}")
    return request.param


@contextlib.contextmanager
def cpu_kernels_off():
    """Run the plain-torch CPU paths (KERNELSERVE_CPU_KERNELS=0, read on every call)."""
    before = os.environ.get(cpu_kernels.ENV_VAR)
    os.environ[cpu_kernels.ENV_VAR] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[cpu_kernels.ENV_VAR]
        else:
            os.environ[cpu_kernels.ENV_VAR] = before


def skip_every_config_on_gpu_check(device: str) -> None:
    """``make gpu-check`` proves every tile config by the AOT compile on CPU and, on the GPU, only the
    tuned choices: compiling each config there took most of a short GPU slot."""
    import os

    if device == "cuda" and os.environ.get("KERNELSERVE_GPU_CHECK") == "1":
        pytest.skip("every tile config is proven by the AOT compile test; gpu-check runs the tuned ones")


@pytest.fixture
def device(impl):
    return triton_device() if impl == "triton" else "cpu"


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, tf32: bool = True,
                 dot_rms: float = 2.0) -> None:
    """Compare with the float64 reference under the dtype's tolerance.

    ``tf32``: whether the op's fp32 path goes through ``tl.dot`` (TF32 on CUDA); ``dot_rms``: the RMS of
    its dot products (:func:`tf32_tolerance`). The default, 2, covers the tests' usual shapes: GEMMs with
    weights scaled by 1/sqrt(K) (RMS 1 each, two chained in an FFN) and attention with scale 1/sqrt(d).
    """
    atol, rtol = TOLERANCES[dtype]
    if tf32 and dtype == torch.float32 and actual.device.type == "cuda":
        atol, rtol = tf32_tolerance(dot_rms)
    assert actual.dtype == dtype, f"output dtype {actual.dtype}, expected {dtype}"
    assert not torch.isnan(actual).any(), "output has NaN"
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), atol=atol, rtol=rtol)


def rand(*shape, dtype, device, scale=1.0, generator=None):
    return (torch.randn(*shape, generator=generator, dtype=torch.float32) * scale).to(dtype).to(device)


def cu_seqlens(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
