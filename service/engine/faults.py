"""Request fault isolation: which errors one request may cause, and which stop the engine.

The engine loop runs every request in one process; an exception raised while
preparing, scheduling, running or sampling must fail only the requests it
belongs to. The exception is a device that can no longer be trusted: after a
CUDA error such as an illegal memory access the context is poisoned and every
later kernel fails, so the engine stops and ``/health`` turns 503 for the
orchestrator to restart the process.
"""
from __future__ import annotations

# CUDA reports these as RuntimeError (torch.AcceleratorError in newer torch); all leave the context unusable.
_FATAL_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS_EXECUTION_FAILED",
                  "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED", "unspecified launch failure", "Triton Error [CUDA]")


class RequestFailed(RuntimeError):
    """One request failed inside the engine; the engine goes on serving the others. HTTP 500, or 400 when
    ``param`` names the request field that made it impossible (a grammar the vocabulary cannot finish)."""

    def __init__(self, request_id: str, message: str, param: str | None = None, client_error: bool = False):
        super().__init__(message)
        self.request_id, self.param, self.client_error = request_id, param, client_error


def is_unrecoverable(err: BaseException) -> bool:
    """Whether ``err`` leaves the engine unable to serve anyone (a poisoned device, the process ending)."""
    if isinstance(err, (KeyboardInterrupt, SystemExit)):
        return True
    if type(err).__name__ == "AcceleratorError":
        return True
    text = str(err)
    return "out of memory" not in text and any(m in text for m in _FATAL_MARKERS)


def describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
