"""Hand-written C++ CPU kernels (``torch.ops.kernelserve.*``), built once per machine and cached.

The sources here are compiled on first use with ``torch.utils.cpp_extension`` for this CPU
(``-march=native``: AVX512-BF16 where the CPU has it, a portable loop elsewhere) into
``$KERNELSERVE_CACHE/cpu-kernels`` (default ``~/.cache/kernelserve``); later processes load the built
library in well under a second. ``KERNELSERVE_CPU_KERNELS=0`` keeps the plain-torch paths; a machine
without a C++ compiler gets them too, with one warning.

Each op has a plain-torch reference beside its launcher (``kernels/cpu/ops.py``) and the same parity
tests as the Triton kernels (tests/kernels/test_cpu_kernels.py).
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
import time

import torch

log = logging.getLogger("kernelserve.kernels")

ENV_VAR = "KERNELSERVE_CPU_KERNELS"
SOURCES = ("quant_gemm.cpp", "ops.cpp", "decoder_layer.cpp")
HEADERS = ("vec.h", "ops.h")
_HERE = os.path.dirname(os.path.abspath(__file__))
_lock = threading.Lock()
_state: dict[str, object] = {}  # "loaded": bool, "error": str


def enabled() -> bool:
    """Whether the C++ kernels may be used (``KERNELSERVE_CPU_KERNELS``, default on)."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> str:
    root = os.environ.get("KERNELSERVE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kernelserve")
    return os.path.join(root, "cpu-kernels")


def _build_name() -> str:
    """One build per source text, torch version and CPU model (-march=native code runs only on its CPU)."""
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        with open(os.path.join(_HERE, name), "rb") as f:
            digest.update(f.read())
    digest.update(torch.__version__.encode())
    digest.update(_cpu_model().encode())
    return "kernelserve_cpu_" + digest.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def load() -> bool:
    """Build (first time on this machine) and load the library; False, with one warning, if it cannot be."""
    if not enabled():
        return False
    if "loaded" in _state:  # every call after the first: no lock
        return bool(_state["loaded"])
    with _lock:
        if "loaded" in _state:
            return bool(_state["loaded"])
        started = time.perf_counter()
        try:
            from torch.utils import cpp_extension

            name = _build_name()
            build = os.path.join(cache_dir(), name)
            os.makedirs(build, exist_ok=True)
            cpp_extension.load(name=name, sources=[os.path.join(_HERE, s) for s in SOURCES], build_directory=build,
                               extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"],
                               is_python_module=False, verbose=False)
            _state["loaded"] = True
            log.info("CPU kernels ready (%s, %.1f s)", "AVX512-BF16" if torch.ops.kernelserve.vectorised()
                     else "portable loops", time.perf_counter() - started)
        except Exception as e:  # no compiler, no ninja, a build error: the torch paths still serve
            _state["loaded"], _state["error"] = False, f"{type(e).__name__}: {e}"
            log.warning("CPU kernels unavailable (%s); using the slower plain-torch CPU paths",
                        str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        return bool(_state["loaded"])


def available() -> bool:
    """Whether the built library is loaded (builds it on first call)."""
    return load()


def vectorised() -> bool:
    """Whether the library was built with the AVX512-BF16 paths (else its portable loops run)."""
    if not available():
        return False
    if "vectorised" not in _state:
        _state["vectorised"] = bool(torch.ops.kernelserve.vectorised())
    return bool(_state["vectorised"])
