"""The engine behind the HTTP layer: one background thread runs the step loop.

``generate()`` returns an async iterator of incremental :class:`RequestOutput`;
closing it early (a client that went away) aborts the request and frees its
KV blocks. Only the engine thread touches the scheduler; other threads talk
to it through an inbox.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator

from .engine import LLMEngine, RequestError
from .faults import RequestFailed, describe, is_unrecoverable
from .outputs import RequestOutput
from .sampling_params import SamplingParams

log = logging.getLogger("kernelserve.engine")


class QueueFull(RuntimeError):
    """Too many requests are waiting (HTTP 429)."""


class EngineDead(RuntimeError):
    """The engine loop stopped on an internal error."""


@dataclass
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    sink: "_Sink"


@dataclass
class _Abort:
    request_id: str


class _Sink:
    """Delivers items from the engine thread into one request's asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class ThroughputLog:
    """vLLM's periodic line while the engine is busy: prompt and generation throughput since the last
    line, requests running and waiting, KV-cache usage. Silent while idle."""

    def __init__(self, name: str, interval: float = 10.0):
        self.name, self.interval = name, interval
        self.last_time, self.last_prompt, self.last_generated = time.monotonic(), 0, 0

    def maybe_log(self, stats: dict) -> None:
        now = time.monotonic()
        if now - self.last_time < self.interval:
            return
        prompt, generated = stats["prompt_tokens"], stats["generation_tokens"]
        busy = stats["num_requests_running"] or stats["num_requests_waiting"]
        if busy or prompt != self.last_prompt or generated != self.last_generated:
            elapsed = now - self.last_time
            log.info("%s: Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                     "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%", self.name,
                     (prompt - self.last_prompt) / elapsed, (generated - self.last_generated) / elapsed,
                     stats["num_requests_running"], stats["num_requests_waiting"],
                     100 * stats["kv_cache_usage_perc"])
        self.last_time, self.last_prompt, self.last_generated = now, prompt, generated


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_waiting_requests: int | None = None, observer=None,
                 log_stats_interval: float = 10.0):
        self.engine = engine
        self.max_waiting = engine.config.max_waiting_requests if max_waiting_requests is None else max_waiting_requests
        self.observer = observer  # called on the engine thread with (engine, outputs) after each step
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, _Sink] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"engine-{engine.loaded.name}", daemon=True)
        self._error: BaseException | None = None
        self._snapshot = engine.stats()
        self._throughput = ThroughputLog(engine.loaded.name, log_stats_interval) if log_stats_interval > 0 else None

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout=10)

    @property
    def num_unfinished(self) -> int:
        return len(self._sinks)

    def stats(self) -> dict:
        """The engine's counters as of its last step (read without locking the engine)."""
        return dict(self._snapshot)

    def check_admission(self) -> None:
        """Raise EngineDead or QueueFull now, from counters alone: refusing costs no engine work."""
        if self._error is not None:
            raise EngineDead(f"engine stopped: {describe(self._error)}")
        waiting = len(self._sinks) - self._snapshot["num_requests_running"]
        if waiting >= self.max_waiting:
            raise QueueFull(f"{waiting} requests are already waiting (limit {self.max_waiting})")

    async def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        self.check_admission()
        if request_id in self._sinks:  # a client-chosen id already in flight: its stream must stay its own
            raise RequestError(f"request id {request_id!r} is already in use", param="request_id")
        sink = _Sink(asyncio.get_running_loop())
        self._sinks[request_id] = sink
        self._inbox.put(_Add(request_id, prompt_token_ids, params, sink))
        return self._stream(request_id, sink)

    async def _stream(self, request_id: str, sink: _Sink) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                item = await sink.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(_Abort(request_id))

    # -- engine thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        """The step loop. ``engine.step()`` isolates request faults itself; what reaches here is
        unrecoverable (a poisoned device) or a bug in this loop: fail every request, mark the engine
        dead (``/health`` answers 503 so an orchestrator restarts the process)."""
        try:
            while not self._stop.is_set():
                self._drain_inbox(block=not self.engine.has_unfinished())
                if self.engine.has_unfinished():
                    self._deliver(self.engine.step())
                if self._throughput is not None:
                    self._throughput.maybe_log(self._snapshot)
        except BaseException as err:
            log.exception("engine loop stopped")
            self._error = err
            for sink in self._sinks.values():
                sink.put(EngineDead(f"engine stopped: {describe(err)}"))
            self._sinks.clear()

    @property
    def dead(self) -> bool:
        return self._error is not None

    def _drain_inbox(self, block: bool) -> None:
        """Handle everything queued; wait briefly for the first item when the engine is idle."""
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:  # None only wakes the loop (shutdown)
                    self._handle(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _handle(self, item) -> None:
        if isinstance(item, _Add):
            self._admit(item)
        elif isinstance(item, _Abort):
            out = self.engine.abort(item.request_id)
            if out is not None:
                self._deliver([out])
            self._snapshot = self.engine.stats()

    def _admit(self, item: _Add) -> None:
        try:
            self.engine.add_request(item.request_id, item.prompt_token_ids, item.params)
        except RequestError as err:
            self._sinks.pop(item.request_id, None)
            item.sink.put(err)
        except Exception as err:  # a bug reached by this request alone: it fails, the engine goes on
            if is_unrecoverable(err):
                raise
            log.exception("admitting request %s failed", item.request_id)
            self._sinks.pop(item.request_id, None)
            item.sink.put(RequestFailed(item.request_id, f"request {item.request_id} failed during admission: "
                                                         f"{describe(err)}"))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        self._snapshot = self.engine.stats()
        if self.observer is not None:
            try:
                self.observer(self.engine, outputs)
            except Exception:  # metrics must never stop the engine
                log.exception("engine observer failed")
        for out in outputs:
            sink = self._sinks.get(out.request_id)
            if sink is None:
                continue
            sink.put(out if out.error is None else RequestFailed(out.request_id, out.error, out.error_param,
                                                                 out.client_error))
            if out.finished:
                del self._sinks[out.request_id]
