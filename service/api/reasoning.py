"""Reasoning models' thinking, split from their answer: ``message.reasoning_content`` (vLLM's field;
``delta.reasoning_content`` when streamed) and ``content``.

Two formats, as vLLM's ``--reasoning-parser`` names them:
- ``qwen3``: the output may open with ``<think>``; what lies between it and ``</think>`` is reasoning. Without the
  opening tag (``enable_thinking: false`` in ``chat_template_kwargs`` renders an empty think block into the
  prompt) everything is content.
- ``deepseek_r1``: the chat template already opened the block, so the output starts inside it: everything up to
  ``</think>`` is reasoning (a ``<think>`` the model repeats is dropped).
A block that max_tokens cuts before ``</think>`` is all reasoning, and the content is null.
"""
from __future__ import annotations

from dataclasses import dataclass

START, END = "<think>", "</think>"


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    starts_inside: bool  # the template opened the block (DeepSeek-R1); else the model opens it (Qwen3)


PARSERS = {"qwen3": ReasoningFormat("qwen3", False), "deepseek_r1": ReasoningFormat("deepseek_r1", True)}


def split_reasoning(fmt: ReasoningFormat, text: str) -> tuple[str | None, str | None]:
    """(reasoning or None, content or None) of a whole output."""
    stream = ReasoningStream(fmt)
    parts = stream.feed(text) + stream.finish()
    reasoning = "".join(t for kind, t in parts if kind == "reasoning")
    content = "".join(t for kind, t in parts if kind == "content")
    opened = fmt.starts_inside or stream.opened
    return (reasoning if opened else None), (content if content or not opened else None)


class ReasoningStream:
    """Incremental split: ``feed`` deltas, get ("reasoning" | "content", text) pieces; text that could be the start
    of a tag is held until the next delta (or ``finish``) decides it."""

    def __init__(self, fmt: ReasoningFormat):
        self.fmt = fmt
        self.state = "reasoning" if fmt.starts_inside else "start"
        self.opened = fmt.starts_inside
        self.held = ""
        self.repeat_possible = fmt.starts_inside  # DeepSeek-R1 may open its block again: dropped

    def feed(self, delta: str) -> list[tuple[str, str]]:
        self.held += delta
        out: list[tuple[str, str]] = []
        while True:
            if self.state == "start":
                stripped = self.held.lstrip()
                if stripped.startswith(START):
                    self.held, self.state, self.opened = stripped[len(START):], "reasoning", True
                    continue
                if stripped and not START.startswith(stripped):  # not a think block: all content
                    self.state = "content"
                    continue
                return out
            if self.state == "content":
                if self.held:
                    out.append(("content", self.held))
                self.held = ""
                return out
            # reasoning: up to </think>; a repeated <think> at the very start is dropped (DeepSeek-R1)
            if self.repeat_possible:
                stripped = self.held.lstrip()
                if stripped.startswith(START):
                    self.held, self.repeat_possible = stripped[len(START):], False
                elif START.startswith(stripped):
                    return out  # "", "<", "<th"...: wait for more
                else:
                    self.repeat_possible = False
            end = self.held.find(END)
            if end >= 0:
                if end:
                    out.append(("reasoning", self.held[:end]))
                self.held, self.state = self.held[end + len(END):], "content"
                continue
            keep = _partial_tag_length(self.held, END)
            if len(self.held) > keep:
                out.append(("reasoning", self.held[: len(self.held) - keep]))
                self.held = self.held[len(self.held) - keep:]
            return out

    def finish(self) -> list[tuple[str, str]]:
        """The output ended: whatever is held belongs to the current part."""
        held, self.held = self.held, ""
        if not held:
            return []
        return [("reasoning" if self.state == "reasoning" else "content", held)]


def _partial_tag_length(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could begin ``tag``."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
