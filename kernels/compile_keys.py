"""Which Triton kernels a GPU would compile, recorded on any machine (no GPU, no launch).

Triton compiles a kernel once per *specialisation key*: the constexpr values, each pointer's dtype and
whether its address is 16-byte aligned, each integer's type and whether it equals 1 or is divisible by 16
(unless the kernel says ``do_not_specialize``), and the launch options (``num_warps``, ``num_stages``). A
key first seen after the server is ``ready`` is a compilation in the middle of a request (seconds on a
GPU), so the warm-up must visit every key serving can produce.

:func:`recording` proves that on the CPU. While it is active, every public kernel call that runs its torch
path on a CPU tensor also runs its Triton launcher in *shadow*: the launcher does all its work (shapes,
strides, split counts, tile choices, views) and calls its kernels, but ``JITFunction.run`` computes the key
Triton's own binder would compute for an sm_90 target and launches nothing. The torch path gives the
results, so an engine runs normally and the recorder sees what a GPU would compile. Tuning must be off
(``KERNELSERVE_TUNING=off``: each GEMM takes its first candidate, as it would after a tuned warm-up picked
one per bucket).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

_ACTIVE: "CompileKeys | None" = None


@dataclass
class CompileKeys:
    """Keys seen, each with the phase (a label the caller sets) in which it was first seen."""
    phase: str = "start"
    first_seen: dict = field(default_factory=dict)  # key -> phase
    launches: int = 0
    _binders: dict = field(default_factory=dict, repr=False)
    _backend: object = field(default=None, repr=False)

    def keys(self, phase: str | None = None) -> set:
        return {k for k, p in self.first_seen.items() if phase is None or p == phase}

    def per_kernel(self, phase: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, *_ in self.keys(phase):
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    def record(self, kernel, args: tuple, kwargs: dict) -> tuple:
        if self._backend is None:
            from triton.backends.compiler import GPUTarget
            from triton.compiler import make_backend

            self._backend = make_backend(GPUTarget("cuda", 90, 32))
        if kernel not in self._binders:
            from triton.runtime.jit import create_function_from_signature

            self._binders[kernel] = create_function_from_signature(kernel.signature, kernel.params, self._backend)
        _, specialization, options = self._binders[kernel](*args, **kwargs)
        key = (kernel.fn.__name__, tuple(tuple(s) if isinstance(s, list) else s for s in specialization),
               tuple(sorted((k, str(v)) for k, v in options.items())))
        self.launches += 1
        self.first_seen.setdefault(key, self.phase)
        return key


def active() -> CompileKeys | None:
    return _ACTIVE


@contextmanager
def recording(keys: CompileKeys):
    """Record the key of every Triton launch (launching nothing) and shadow every torch-path kernel call."""
    global _ACTIVE
    from triton.runtime.jit import JITFunction

    real_run = JITFunction.run

    def record_only(self, *args, grid, warmup, **kwargs):
        keys.record(self, args, kwargs)
        return None

    JITFunction.run, _ACTIVE = record_only, keys
    try:
        yield keys
    finally:
        JITFunction.run, _ACTIVE = real_run, None


def shadow(launcher, *args, **kwargs) -> None:
    """Run ``launcher`` for its keys when recording (its output is garbage: nothing was launched)."""
    if _ACTIVE is not None:
        launcher(*args, **kwargs)
