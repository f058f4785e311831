"""Tile choices settled before serving and kept across restarts; compilations after ``ready`` counted.

Triton's autotuner times every candidate config the first time it meets a key — in the middle of
serving, for each new token-count bucket a continuous batch passes through. :class:`Tuner` makes
the same choice (time each candidate, keep the fastest) under a key whose token count is a power-of-two
bucket, so the engine's warm-up can visit every bucket before it logs ``ready``; the choices persist
in a JSON file per GPU name and Triton version (:class:`TuningCache`), so a restart times nothing.

After :func:`mark_ready`, :data:`STATS` counts tunings and kernel compilations (through Triton's
``jit_post_compile_hook``): both should stay 0 while serving, and the server exports them.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable

import triton

log = logging.getLogger("kernelserve.kernels")

MAX_M_BUCKET = 4096
CACHE_ENV = "KERNELSERVE_TUNING_CACHE"  # a folder; default ~/.cache/kernelserve/tuning
# "off": take each kernel's first candidate without timing (kernel tests on a GPU: correctness, not speed)
TUNING_ENV = "KERNELSERVE_TUNING"


def m_bucket(m: int) -> int:
    """The token-count bucket a GEMM is tuned for: the next power of two, at most 4096."""
    return min(triton.next_power_of_2(max(m, 1)), MAX_M_BUCKET)


def m_buckets(max_tokens: int) -> list[int]:
    """Every bucket a step of up to ``max_tokens`` tokens can fall in (what warm-up visits)."""
    top = m_bucket(max_tokens)
    return [1 << i for i in range(top.bit_length()) if 1 << i <= top]


@dataclass
class TuningStats:
    tunings: int = 0
    compilations: int = 0
    tunings_after_ready: int = 0
    compilations_after_ready: int = 0
    ready: bool = False


STATS = TuningStats()


def mark_ready() -> None:
    """From now on every tuning and compilation is a stall in serving: count it (and say so once)."""
    STATS.ready = True
    _install_compile_counter()


def _install_compile_counter() -> None:
    from triton import knobs

    previous = knobs.runtime.jit_post_compile_hook
    if getattr(previous, "_kernelserve", False):
        return

    def counted(*args, **kwargs):
        STATS.compilations += 1
        if STATS.ready:
            STATS.compilations_after_ready += 1
            if STATS.compilations_after_ready == 1:
                log.warning("a Triton kernel compiled after ready (%s): warm-up missed a variant",
                            kwargs.get("repr", "?"))
        return previous(*args, **kwargs) if previous is not None else None

    counted._kernelserve = True
    knobs.runtime.jit_post_compile_hook = counted


def _config_spec(config: triton.Config) -> list:
    """A config as plain JSON data (lists, so a spec read back from the file compares equal)."""
    return [[list(kv) for kv in sorted(config.kwargs.items())], config.num_warps, config.num_stages]


@dataclass
class TuningCache:
    """``{key: config}`` in a JSON file; ``path`` None keeps it in memory only."""
    path: str | None = None
    choices: dict[str, list] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def for_device(device_name: str, folder: str | None = None) -> "TuningCache":
        folder = folder or os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache",
                                                                       "kernelserve", "tuning")
        safe = "".join(c if c.isalnum() else "-" for c in device_name)
        cache = TuningCache(os.path.join(folder, f"{safe}-triton-{triton.__version__}.json"))
        cache.load()
        return cache

    def load(self) -> None:
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    self.choices = json.load(f)
            except (OSError, ValueError) as err:  # a broken cache is re-tuned, not fatal
                log.warning("tuning cache %s unreadable (%s): tuning again", self.path, err)
                self.choices = {}

    def get(self, key: str, candidates: list[triton.Config]) -> triton.Config | None:
        spec = self.choices.get(key)
        return next((c for c in candidates if _config_spec(c) == spec), None) if spec is not None else None

    def put(self, key: str, config: triton.Config) -> None:
        with self._lock:
            self.choices[key] = _config_spec(config)
            if self.path:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                tmp = f"{self.path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    json.dump(self.choices, f, indent=0, sort_keys=True)
                os.replace(tmp, self.path)


_CACHES: dict[str, TuningCache] = {}


def cache_for(device) -> TuningCache:
    """The persisted cache of ``device``'s GPU (one per process and GPU name)."""
    import torch

    name = torch.cuda.get_device_name(device)
    if name not in _CACHES:
        _CACHES[name] = TuningCache.for_device(name)
    return _CACHES[name]


def _benchmark(launch: Callable[[], None]) -> float:
    return triton.testing.do_bench(launch, warmup=5, rep=20)


@dataclass
class Tuner:
    """Chooses, per key, the fastest of ``candidates(dtype)`` for a plain (un-autotuned) Triton kernel.

    ``timer(launch) -> ms`` times a launch (``triton.testing.do_bench`` on the GPU); ``cache`` defaults to
    the device's persisted :class:`TuningCache`; ``run(config, args, kwargs)``, when given, launches a
    candidate instead of ``kernel[grid(config)]`` (a candidate may be several kernels, or cuBLAS).
    """
    name: str
    kernel: object  # a @triton.jit function
    candidates: Callable[..., list[triton.Config]]
    timer: Callable[[Callable[[], None]], float] = _benchmark
    cache: TuningCache | None = None
    run: Callable[[triton.Config, tuple, dict], None] | None = None
    _memo: dict = field(default_factory=dict, repr=False)

    def launch(self, key: tuple, grid: Callable[[triton.Config], tuple], args: tuple, kwargs: dict,
               candidate_args: tuple, device=None) -> None:
        config = self.choose(key, grid, args, kwargs, candidate_args, device)
        self._run(config, grid, args, kwargs)

    def _run(self, config: triton.Config, grid, args, kwargs) -> None:
        if self.run is not None:
            self.run(config, args, kwargs)
            return
        self.kernel[grid(config)](*args, **kwargs, **config.kwargs, num_warps=config.num_warps,
                                  num_stages=config.num_stages)

    def choose(self, key: tuple, grid, args, kwargs, candidate_args: tuple, device=None) -> triton.Config:
        full = "|".join(map(str, (self.name, *key)))
        if full in self._memo:
            return self._memo[full]
        candidates = self.candidates(*candidate_args)
        if os.environ.get(TUNING_ENV) == "off":
            return candidates[0]
        cache = self.cache if self.cache is not None else cache_for(device)
        config = cache.get(full, candidates)
        if config is None:
            config = self._tune(full, candidates, grid, args, kwargs)
            cache.put(full, config)
        self._memo[full] = config
        return config

    def _tune(self, full: str, candidates, grid, args, kwargs) -> triton.Config:
        STATS.tunings += 1
        if STATS.ready:
            STATS.tunings_after_ready += 1
            log.warning("tuning %s after ready: warm-up missed this shape", full)
        timings = [(self.timer(lambda c=c: self._run(c, grid, args, kwargs)), i) for i, c in enumerate(candidates)]
        best = candidates[min(timings)[1]]
        log.info("tuned %s: %s (%.3f ms)", full, best, min(timings)[0])
        return best
