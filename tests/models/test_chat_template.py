"""The bounded chat-template sandbox in this process (models/chat_template.py); the worker process and its
kill on timeout are tested against a live server in tests/service/test_chat_templates.py."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from models import ChatTemplateError, RenderLimits, TemplateLimitError, TemplateSecurityError
from models import chat_template
from models.chat_template import compile_template, frame, read_frame, render

SMALL = RenderLimits(seconds=5, max_chars=1000, max_range=50, max_range_items=200)
CONTEXT = {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True}


def rendered(source: str, limits: RenderLimits = SMALL, kwargs: dict | None = None) -> str:
    return render(compile_template(source, limits), CONTEXT, kwargs)


def test_an_ordinary_template_renders():
    source = "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    assert rendered(source) == "[user] hi>"


@pytest.mark.parametrize("source, limit", [
    ("{{ range(51)|length }}", "max_range"),
    ("{% for i in range(50) %}{% for j in range(50) %}{% endfor %}{% endfor %}", "max_range_items"),
    ("{{ 'x' * 1001 }}", "max_chars"),
    ("{{ 1001 * ['x'] }}", "max_chars"),
    ("{% for i in range(20) %}{{ 'y' * 60 }}{% endfor %}", "max_chars"),  # 1,200 characters of output
    ("{% set s %}{% for i in range(20) %}{{ 'y' * 60 }}{% endfor %}{% endset %}", "max_chars"),  # a capture
    ("{% macro m() %}{% for i in range(20) %}{{ 'y' * 60 }}{% endfor %}{% endmacro %}{% set s = m() %}", "max_chars"),
    ("{{ 7 ** 5000 }}", "power"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion"),
])
def test_each_limit_stops_the_render_and_names_itself(source, limit):
    with pytest.raises(TemplateLimitError) as err:
        rendered(source)
    assert err.value.limit == limit


def test_right_at_the_limits_renders():
    assert rendered("{{ 'x' * 1000 }}") == "x" * 1000
    assert rendered("{% for i in range(50) %}{% for j in range(3) %}{% endfor %}{% endfor %}ok") == "ok"
    assert rendered("{{ range(50)|length }} {{ range(50)[49] }} {{ 49 in range(50) }}") == "50 49 True"
    assert rendered("{% for i in range(3)|reverse %}{{ i }}{% endfor %}") == "210"


def test_the_deadline_stops_a_render_that_only_loops():
    limits = RenderLimits(seconds=0.2)
    with pytest.raises(TemplateLimitError) as err:
        rendered("{% for i in range(100000) %}{% for j in range(100) %}{% endfor %}{% endfor %}", limits)
    assert err.value.limit in ("seconds", "max_range_items")


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__ }}", "{{ messages.append(1) }}", "{% set x = messages.pop() %}",
                                    "{{ cycler.__init__.__globals__ }}", "{{ lipsum(1000000) }}"])
def test_the_sandbox_refuses(source):
    with pytest.raises(ChatTemplateError) as err:
        rendered(source)
    assert isinstance(err.value, TemplateSecurityError) or "lipsum" in str(err.value)


def test_kwargs_reach_only_names_the_template_reads_and_never_replace_the_context():
    source = "{{ greeting }}|{{ messages|length }}"
    assert rendered(source, kwargs={"greeting": "hello", "unused": 1}) == "hello|1"
    assert rendered(source, kwargs={"greeting": "hi", "messages": [1, 2, 3]}) == "hi|1"


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_chars"):
        RenderLimits(max_chars=0)


def test_broken_templates_and_template_errors_are_chat_template_errors():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        compile_template("{% for %}")
    with pytest.raises(ChatTemplateError, match="nope"):
        rendered("{{ raise_exception('nope') }}")
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError"):
        rendered("{{ 1 / 0 }}")


def test_the_worker_answers_framed_requests_and_restarts_after_running_out_of_memory():
    proc = subprocess.Popen([sys.executable, "-I", chat_template.__file__, "--worker", str(64 << 20)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    limits = {"seconds": 5.0, "max_chars": 1 << 30, "max_range": 100, "max_range_items": 1000,
              "memory_bytes": 64 << 20}
    ask = {"template": "{{ messages[0].content }}!", "limits": limits, "context": CONTEXT, "kwargs": {}}
    proc.stdin.write(frame(ask) + frame({**ask, "template": "{{ 'x' * 500000000 }}"}))
    proc.stdin.flush()
    assert json.loads(read_frame(proc.stdout)) == {"text": "hi!", "restart": False}
    reply = json.loads(read_frame(proc.stdout))
    assert reply["error"] == "limit" and reply["limit"] == "memory" and reply["restart"]
    assert proc.wait(timeout=10) == 0  # it ends after a memory error; its parent starts another
