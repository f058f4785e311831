"""Chat templates: Jinja rendered in a bounded sandbox, in this process or in a render worker process.

A chat template is code. The model's own comes with the weights (a GGUF or a hub folder can carry a
hostile one); a template sent in a request comes from anyone who can reach the server. Both render
under the same bounds:

- the jinja2 sandbox (``ImmutableSandboxedEnvironment``): no attribute starting with ``_``, no
  mutation of lists or dicts; a violation is a ``TemplateSecurityError``;
- ``RenderLimits``: the rendered text stops growing at ``max_chars`` (the render streams through
  ``generate`` and is cut off as soon as it passes); one ``range()`` holds at most ``max_range``
  items and one render draws at most ``max_range_items`` from all its ranges (nested loops multiply);
  string and list repetition, ``**`` and block captures (``{% set %}...{% endset %}``, macros) are
  checked before they allocate; exceeding a limit is a ``TemplateLimitError`` naming it.

What the sandbox cannot bound in-process (a C-level call that builds a huge object, a loop that runs
without output) is bounded by running the render in a worker: ``python models/chat_template.py
--worker`` reads framed requests on stdin, renders under an address-space limit (``memory_bytes``),
and its parent (``service/api/templates.py``) kills it when ``seconds`` pass. This file therefore
imports only the standard library and jinja2: the worker starts without torch or the models package.
"""
from __future__ import annotations

import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass

__all__ = ["ChatTemplateError", "RenderLimits", "TemplateLimitError", "TemplateSecurityError", "compile_template",
           "render", "render_request"]


@dataclass(frozen=True)
class RenderLimits:
    seconds: float = 2.0  # wall clock of one render (in a worker: it is killed; in-process: checked as it streams)
    max_chars: int = 4 << 20  # rendered text, and any one string or list the template builds
    max_range: int = 100_000  # items of one range() (jinja's own sandbox bound)
    max_range_items: int = 1_000_000  # items drawn from every range() of one render together
    memory_bytes: int = 512 << 20  # a render worker's address space above its start-up size

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not value > 0:
                raise ValueError(f"RenderLimits.{name} must be positive, got {value!r}")


class ChatTemplateError(ValueError):
    """The chat template could not render these messages (it raised, or a field it needs is missing)."""


class TemplateLimitError(ChatTemplateError):
    """Rendering passed one of ``RenderLimits``; ``limit`` names it."""

    def __init__(self, limit: str, message: str):
        super().__init__(message)
        self.limit = limit


class TemplateSecurityError(ChatTemplateError):
    """The sandbox refused an operation (``{{ ''.__class__ }}``, mutating a list, an unsafe call)."""


def _raise_exception(message: str):
    raise ChatTemplateError(message)


def _too_big(what: str, size: int, limits: RenderLimits) -> TemplateLimitError:
    return TemplateLimitError("max_chars", f"the template builds {what} of {size:,} items; the limit is "
                                           f"{limits.max_chars:,}")


def _sized(value) -> bool:
    return isinstance(value, (str, list, tuple, bytes))


def _environment(limits: RenderLimits):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        # rendered the way transformers' apply_chat_template does (trim/lstrip blocks, loopcontrols), plus the
        # checks below on the operations that can allocate without bound in one step
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if _sized(seq) and isinstance(times, int) and len(seq) * times > limits.max_chars:
                        raise _too_big("a repetition", len(seq) * times, limits)
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and max(left.bit_length(), 1) * right > 4096:
                raise TemplateLimitError("power", f"{left} ** {right} has more than 4096 bits")
            return super().call_binop(context, operator, left, right)

    def concat(parts):  # {% set %} blocks, macros and filter blocks join their output with this
        parts = list(parts)
        size = sum(len(p) for p in parts)
        if size > limits.max_chars:
            raise _too_big("a block of text", size, limits)
        return "".join(parts)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.concat = concat
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, sort_keys=False: json.dumps(
        x, indent=min(indent, 16) if isinstance(indent, int) else indent, ensure_ascii=ensure_ascii,
        sort_keys=sort_keys)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.globals.pop("lipsum", None)  # text of any length on request; no chat template uses it
    return env


@dataclass(frozen=True)
class CompiledTemplate:
    template: object  # a jinja2 Template
    variables: frozenset  # the names the template reads from its context (what chat_template_kwargs may set)
    limits: RenderLimits


def compile_template(source: str, limits: RenderLimits = RenderLimits()) -> CompiledTemplate:
    from jinja2 import TemplateError, meta

    env = _environment(limits)
    try:
        tree = env.parse(source)
        return CompiledTemplate(env.from_string(tree), frozenset(meta.find_undeclared_variables(tree)), limits)
    except TemplateError as err:
        raise ChatTemplateError(f"the chat template does not compile: {err}") from None
    except RecursionError:
        raise TemplateLimitError("recursion", "the chat template nests too deeply to compile") from None


class _RangeBudget:
    """Items every ``range()`` of one render may still yield, and the render's deadline."""

    def __init__(self, limits: RenderLimits, deadline: float):
        self.limits, self.left, self.deadline = limits, limits.max_range_items, deadline

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TemplateLimitError("max_range_items", f"the template's loops drew more than "
                                                        f"{self.limits.max_range_items:,} items from range()")
        if self.left % 4096 == 0:
            _check_deadline(self.deadline, self.limits)

    def range(self, *args):
        items = range(*args)
        if len(items) > self.limits.max_range:
            raise TemplateLimitError("max_range", f"range() of {len(items):,} items; the limit is "
                                                  f"{self.limits.max_range:,}")
        return _CountedRange(items, self)


class _CountedRange:
    """A ``range`` whose iteration spends the render's budget (``len``, indexing and ``in`` are free)."""

    def __init__(self, items: range, budget: _RangeBudget):
        self.items, self.budget = items, budget

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __contains__(self, value):
        return value in self.items

    def __iter__(self):
        for value in self.items:
            self.budget.take()
            yield value

    def __reversed__(self):
        return iter(_CountedRange(self.items[::-1], self.budget))


def _check_deadline(deadline: float, limits: RenderLimits) -> None:
    if time.monotonic() > deadline:
        raise TemplateLimitError("seconds", f"rendering took longer than {limits.seconds:g} s")


def render(compiled: CompiledTemplate, context: dict, kwargs: dict | None = None) -> str:
    """Render with ``context`` (messages, add_generation_prompt, special tokens, tools) and those ``kwargs``
    (a request's ``chat_template_kwargs``) the template reads; kwargs it does not read are dropped, as vLLM
    drops them, and none may replace a ``context`` name (the caller refuses those)."""
    from jinja2.exceptions import SecurityError

    limits = compiled.limits
    deadline = time.monotonic() + limits.seconds
    budget = _RangeBudget(limits, deadline)
    extra = {k: v for k, v in (kwargs or {}).items() if k in compiled.variables and k not in context}
    variables = {**extra, **context, "range": budget.range}
    parts, size = [], 0
    try:
        for part in compiled.template.generate(**variables):
            size += len(part)
            if size > limits.max_chars:
                raise TemplateLimitError("max_chars", f"the rendered prompt passed {limits.max_chars:,} characters")
            _check_deadline(deadline, limits)
            parts.append(part)
    except ChatTemplateError:
        raise
    except RecursionError:
        raise TemplateLimitError("recursion", "the template recursed too deeply") from None
    except MemoryError:
        raise TemplateLimitError("memory", "rendering ran out of its memory") from None
    except Exception as err:  # whatever the template's code raised is the template's fault, not the server's
        if isinstance(err, SecurityError):
            raise TemplateSecurityError(f"the sandbox refused: {err}") from None
        raise ChatTemplateError(f"{type(err).__name__}: {err}") from None
    return "".join(parts)


# -- the render worker: python models/chat_template.py --worker MEMORY_BYTES ------------------------------------

HEADER_BYTES = 8  # each message: its length (big-endian) then that many bytes of JSON


def read_frame(stream) -> bytes | None:
    header = stream.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        return None
    return stream.read(int.from_bytes(header, "big"))


def frame(payload: dict) -> bytes:
    data = json.dumps(payload).encode("ascii")  # \u escapes: a lone surrogate a template wrote travels too
    return len(data).to_bytes(HEADER_BYTES, "big") + data


def render_request(request: dict, cache: dict) -> dict:
    """One worker request ``{"template", "limits", "context", "kwargs"}`` -> ``{"text"}`` or ``{"error", ...}``."""
    try:
        key = (request["template"], tuple(sorted(request["limits"].items())))
        if key not in cache:
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            cache[key] = compile_template(request["template"], RenderLimits(**request["limits"]))
        return {"text": render(cache[key], request["context"], request.get("kwargs"))}
    except TemplateLimitError as err:
        return {"error": "limit", "limit": err.limit, "message": str(err)}
    except TemplateSecurityError as err:
        return {"error": "security", "message": str(err)}
    except ChatTemplateError as err:
        return {"error": "template", "message": str(err)}


def _limit_address_space(extra_bytes: int) -> None:
    import os
    import resource

    with open("/proc/self/statm") as f:
        start_up = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (start_up + extra_bytes, start_up + extra_bytes))


def serve_worker(memory_bytes: int) -> None:
    import jinja2.sandbox  # noqa: F401  (imported before the limit is set: it is start-up, not rendering)

    _limit_address_space(memory_bytes)
    cache: dict = {}
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (data := read_frame(stdin)) is not None:
        try:
            reply = render_request(json.loads(data), cache)
        except MemoryError:  # the worker's own bookkeeping hit the limit: answer, then start afresh
            reply = {"error": "limit", "limit": "memory", "message": "rendering ran out of its memory"}
        restart = reply.get("limit") == "memory"
        stdout.write(frame({**reply, "restart": restart}))
        stdout.flush()
        if restart:
            return


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    serve_worker(int(sys.argv[2]))
