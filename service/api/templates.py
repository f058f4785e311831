"""Chat templates rendered off the event loop, in worker processes the server can kill.

Every chat prompt the server renders (the model's own template and, when the operator trusts them,
templates sent in requests) goes to a render worker: ``models/chat_template.py`` run as a script
(standard library and jinja2 only, so a worker starts in ~0.1 s and holds ~20 MB). Inside it the
sandbox and ``RenderLimits`` bound the text, ranges and repetitions; around it the worker's address
space is capped (``memory_bytes``), and a render that outlives ``seconds`` has its worker killed and
replaced. So no template, however written, can grow the server or hold a core past the limit.

Two lanes of workers: the models' own templates and request-supplied ones, so requests with hostile
templates can occupy only their own lane while ordinary chats keep rendering.
"""
from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field

from models import ChatTemplateError, RenderLimits, TemplateLimitError, TemplateSecurityError
from models import chat_template as worker_script
from models.chat_template import HEADER_BYTES, frame

LIMIT_HINTS = {"seconds": "--chat-template-timeout", "max_chars": "the rendered prompt's size",
               "memory": "the render worker's memory", "max_range": "range() size",
               "max_range_items": "items drawn from range()", "power": "the size of a power",
               "recursion": "recursion depth"}


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    async def ask(self, request: dict) -> dict:
        self.proc.stdin.write(frame(request))
        await self.proc.stdin.drain()
        size = int.from_bytes(await self.proc.stdout.readexactly(HEADER_BYTES), "big")
        return json.loads(await self.proc.stdout.readexactly(size))

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class WorkerLane:
    """Up to ``size`` render workers, started on first use and replaced when one is killed."""

    def __init__(self, limits: RenderLimits, size: int):
        self.limits, self.size = limits, size
        self._idle: list[_Worker] = []
        self._slots: asyncio.Semaphore | None = None  # made on first use, inside the server's event loop

    async def _start(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", worker_script.__file__, "--worker", str(self.limits.memory_bytes),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return _Worker(proc)

    async def render(self, request: dict) -> dict:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        async with self._slots:
            worker = self._idle.pop() if self._idle else await self._start()
            try:  # the clock starts once a worker is ready: a queue or a worker's start-up is not the template's
                reply = await asyncio.wait_for(worker.ask(request), self.limits.seconds)
            except asyncio.TimeoutError:
                worker.kill()
                raise TemplateLimitError("seconds", f"rendering took longer than {self.limits.seconds:g} s") \
                    from None
            except (asyncio.IncompleteReadError, ConnectionError):
                worker.kill()  # it died mid-render: past its address-space limit in C code, or killed
                raise TemplateLimitError("memory", "the render worker ended while rendering (over its memory "
                                                   "limit)") from None
            except BaseException:  # cancelled (the client left) mid-exchange: the worker's pipe is in an unknown state
                worker.kill()
                raise
            if reply.get("restart"):
                worker.kill()
            else:
                self._idle.append(worker)
            return reply

    def close(self) -> None:
        for worker in self._idle:
            worker.kill()
        self._idle.clear()


@dataclass
class TemplateRendering:
    """How the server renders chat templates: the limits, whether request templates are trusted, the lanes."""
    limits: RenderLimits = RenderLimits()
    trust_request_templates: bool = False
    workers_per_lane: int = 2
    _lanes: dict = field(default_factory=dict, repr=False)

    def lane(self, name: str) -> WorkerLane:
        if name not in self._lanes:
            self._lanes[name] = WorkerLane(self.limits, self.workers_per_lane)
        return self._lanes[name]

    async def render(self, template: str, context: dict, kwargs: dict | None, from_request: bool) -> str:
        """The rendered text; ``ChatTemplateError`` (or its subclasses) when the template fails or passes a limit."""
        request = {"template": template, "limits": asdict(self.limits), "context": context, "kwargs": kwargs or {}}
        reply = await self.lane("request" if from_request else "model").render(request)
        if "text" in reply:
            text = reply["text"]
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ChatTemplateError("the template wrote text that is not valid Unicode (a lone surrogate)") \
                    from None
            return text
        if reply["error"] == "limit":
            raise TemplateLimitError(reply["limit"], reply["message"])
        if reply["error"] == "security":
            raise TemplateSecurityError(reply["message"])
        raise ChatTemplateError(reply["message"])

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.close()
