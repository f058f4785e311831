"""Which implementation a kernel call runs: Triton or plain torch.

``KERNELSERVE_KERNELS`` selects it (read on every call, so tests and the CLI can
set it): ``auto`` (default) runs Triton on CUDA tensors and torch elsewhere;
``triton`` forces the Triton kernels (on CPU tensors this needs
``TRITON_INTERPRET=1``, Triton's interpreter); ``torch`` forces the torch path.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "KERNELSERVE_KERNELS"


def interpreting() -> bool:
    """True when Triton kernels run through Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def selected_backend() -> str:
    name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def use_triton(t: torch.Tensor) -> bool:
    """Whether a call whose main input is ``t`` should run the Triton kernel."""
    backend = selected_backend()
    if backend == "torch":
        return False
    if backend == "triton":
        if t.device.type != "cuda" and not interpreting():
            raise ValueError(
                f"{ENV_VAR}=triton needs CUDA tensors (got {t.device}); set TRITON_INTERPRET=1 to run Triton on the CPU"
            )
        return True
    return t.device.type == "cuda"


def backend_for(device: torch.device | str) -> str:
    """The backend name that ``auto`` resolves to on ``device`` (for logs and metrics)."""
    backend = selected_backend()
    if backend != "auto":
        return backend
    return "triton" if torch.device(device).type == "cuda" else "torch"
