"""The chat templates of the families kernelserve serves (Qwen3, Qwen2.5, Gemma 2, Llama 3.1-3.3, Phi-3.5,
Mistral, SmolLM3, DeepSeek-R1 distills), rendered by models/chat_template.py as transformers renders them.

Chat templates are model files, not installable packages; llama.cpp keeps copies of the real ones for its own tests
(``models/templates`` in its tree). They are read from the llama.cpp tree that the ``llama-cpp-python`` sdist
vendors (the peers benchmark's copy under ``.cache/peers``, or the sdist downloaded once into ``.cache``).
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import pytest

from models.chat_template import ChatTemplateError, compile_template, render

ROOT = pathlib.Path(__file__).resolve().parents[2]
SDIST = "llama-cpp-python==0.3.36"  # the pin benchmarks/peers/run.py builds llama-server from
FAMILIES = {
    "qwen3": "Qwen-Qwen3-0.6B.jinja", "qwen2.5": "Qwen-Qwen2.5-7B-Instruct.jinja",
    "gemma2": "google-gemma-2-2b-it.jinja", "llama3.1": "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "llama3.2": "meta-llama-Llama-3.2-3B-Instruct.jinja", "llama3.3": "meta-llama-Llama-3.3-70B-Instruct.jinja",
    "phi3.5": "microsoft-Phi-3.5-mini-instruct.jinja", "mistral-nemo": "mistralai-Mistral-Nemo-Instruct-2407.jinja",
    "mistral-small-3.2": "Mistral-Small-3.2-24B-Instruct-2506.jinja", "smollm3": "HuggingFaceTB-SmolLM3-3B.jinja",
    "deepseek-r1-qwen": "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
}
SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}  # what the templates read beside the messages

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string",
                   "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
CALL = {"id": "call0abcd", "type": "function",  # 9 alphanumerics: Mistral's templates check the id's shape
        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}
CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hi there!"}],
    "system": [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Sky colour?"}],
    "multi-turn": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
                   {"role": "user", "content": "Another, please."}],
    "tool-call": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [CALL]},
                  {"role": "tool", "tool_call_id": "call0abcd", "name": "get_weather",
                   "content": json.dumps({"temperature": 21})}],
}


def _templates_dir() -> pathlib.Path:
    for found in sorted((ROOT / ".cache" / "peers").glob("llama-cpp-src/*/vendor/llama.cpp/models/templates")):
        return found
    target = ROOT / ".cache" / "chat-templates"
    if all((target / name).exists() for name in FAMILIES.values()):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                              SDIST, "-d", tmp], capture_output=True, text=True, timeout=600)
        archives = list(pathlib.Path(tmp).glob("*.tar.gz"))
        if got.returncode or not archives:  # PyPI is reachable wherever `make test` installs: a failure, not a skip
            pytest.fail(f"{SDIST} could not be downloaded (the family templates come from it): {got.stderr[-300:]}")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0]) as tar:
            for member in tar.getmembers():
                name = member.name.rsplit("/", 1)[-1]
                if "/vendor/llama.cpp/models/templates/" in member.name and name in FAMILIES.values():
                    (target / name).write_bytes(tar.extractfile(member).read())
    return target


@pytest.fixture(scope="module")
def templates() -> dict[str, str]:
    folder = _templates_dir()
    return {family: (folder / name).read_text() for family, name in FAMILIES.items()}


def theirs(source: str, messages, tools, add_generation_prompt: bool, **kwargs) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], tools=tools, chat_template=source,
                                        add_generation_prompt=add_generation_prompt, **SPECIALS, **kwargs)
    return rendered[0]


def ours(source: str, messages, tools, add_generation_prompt: bool, **kwargs) -> str:
    context = {**SPECIALS, "messages": messages, "add_generation_prompt": add_generation_prompt,
               **({"tools": tools} if tools else {})}
    return render(compile_template(source), context, kwargs)


def outcome(fn, *args, **kwargs) -> tuple[str, str]:
    """("ok", text), or ("raised", message) where the template itself refuses the conversation."""
    try:
        return "ok", fn(*args, **kwargs)
    except ChatTemplateError as err:
        return "raised", str(err.__cause__ or err).split(": ", 1)[-1]
    except Exception as err:  # transformers lets a template's raise_exception through as TemplateError
        return "raised", str(err)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [True, False], ids=["gen", "nogen"])
def test_family_template_renders_as_transformers(templates, family, conversation, generation_prompt):
    tools = [WEATHER] if conversation == "tool-call" else None
    args = (templates[family], CONVERSATIONS[conversation], tools, generation_prompt)
    mine, reference = outcome(ours, *args), outcome(theirs, *args)
    assert mine[0] == reference[0], (mine, reference)
    if reference[0] == "ok":
        assert mine[1] == reference[1]
        first_user = next(m["content"] for m in CONVERSATIONS[conversation] if m["role"] == "user")
        assert first_user in mine[1]
    else:
        assert mine[1] == reference[1]  # the same refusal (Gemma has no system role, ...)


@pytest.mark.parametrize("thinking", [True, False])
def test_qwen3_enable_thinking_through_template_kwargs(templates, thinking):
    args = (templates["qwen3"], CONVERSATIONS["user"], None, True)
    text = ours(*args, enable_thinking=thinking)
    assert text == theirs(*args, enable_thinking=thinking)
    assert text.endswith("<think>\n\n</think>\n\n") != thinking  # off: an empty think block is pre-filled
