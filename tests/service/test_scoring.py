"""Scoring clients: /v1/completions with echo and logprobs returns the prompt's own logprobs (OpenAI's legacy
completions and vLLM do; lm-evaluation-harness reads them), equal to a full forward pass of transformers on
the same weights. The server serves SmolLM2 exported to a Hugging Face folder, in float32, so both sides
read the very same files."""
from __future__ import annotations

import json
import math

import httpx
import pytest
import torch

from ..conftest import SMOLLM, Server

pytestmark = pytest.mark.slow

COMP = "/v1/completions"
TOL = 1e-4  # float32 on both sides; the reductions run in another order (measured: 1.4e-5 at most)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from models import load_model
    from models.export import export_hf_folder

    return export_hf_folder(load_model(SMOLLM, quantization="none", dtype="float32"),
                            str(tmp_path_factory.mktemp("smollm2-hf")))


@pytest.fixture(scope="module")
def scoring(hf_folder):
    s = Server("--model", f"{SMOLLM}={hf_folder}", "--dtype", "float32")
    with httpx.Client(base_url=s.url, timeout=120) as http:
        yield s, http
    s.stop()


@pytest.fixture(scope="module")
def hf(hf_folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32).eval()


def hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab]: row t is the log-distribution of token t given tokens before it (row 0 unused)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.cat([torch.full_like(logits[:1], math.nan), logits[:-1].log_softmax(-1)])


def token_ids(http: httpx.Client, text: str) -> list[int]:
    return http.post("/tokenize", json={"model": SMOLLM, "prompt": text}).json()["tokens"]


def assert_matches_hf(hf_model, ids: list[int], logprobs: dict, k: int) -> None:
    ref = hf_logprobs(hf_model, ids)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert len(logprobs["token_logprobs"]) == len(ids)
    for t in range(1, len(ids)):
        assert logprobs["token_logprobs"][t] == pytest.approx(ref[t, ids[t]].item(), abs=TOL), t
        top = logprobs["top_logprobs"][t]
        best = ref[t].topk(k).values.tolist()
        assert sorted(top.values(), reverse=True)[:k] == pytest.approx(best, abs=TOL), t
        assert len(top) in (k, k + 1)  # the k most likely, and the chosen token when it is not among them


def test_echo_returns_the_prompts_logprobs_as_transformers_computes_them(scoring, hf):
    _, http = scoring
    prompt = "The capital of France is"
    r = http.post(COMP, json={"model": SMOLLM, "prompt": prompt, "echo": True, "logprobs": 2, "max_tokens": 8,
                              "temperature": 0}).json()
    choice, ids = r["choices"][0], token_ids(http, prompt)
    lp = choice["logprobs"]
    n_prompt, n_out = r["usage"]["prompt_tokens"], r["usage"]["completion_tokens"]
    assert n_prompt == len(ids) and len(lp["tokens"]) == n_prompt + n_out == len(lp["text_offset"])
    assert choice["text"].startswith(prompt) and "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"][0] == 0 and lp["text_offset"][n_prompt] == len(prompt)
    assert all(a + len(t) == b for a, t, b in zip(lp["text_offset"], lp["tokens"], lp["text_offset"][1:]))
    # transformers over prompt + its own greedy continuation: the same tokens, the same numbers throughout
    with torch.no_grad():
        generated = hf.generate(torch.tensor([ids]), max_new_tokens=n_out, do_sample=False)[0].tolist()
    assert len(generated) == n_prompt + n_out
    assert_matches_hf(hf, generated, lp, 2)


def test_scoring_without_generating(scoring, hf):
    _, http = scoring
    text = "Paris is the capital and largest city of France."
    r = http.post(COMP, json={"model": SMOLLM, "prompt": text, "echo": True, "logprobs": 1, "max_tokens": 0})
    body = r.json()
    assert r.status_code == 200 and body["choices"][0]["text"] == text
    assert body["usage"]["completion_tokens"] == 0 and body["choices"][0]["finish_reason"] == "length"
    assert_matches_hf(hf, token_ids(http, text), body["choices"][0]["logprobs"], 1)
    no_echo = http.post(COMP, json={"model": SMOLLM, "prompt": text, "max_tokens": 0})
    assert no_echo.status_code == 400 and no_echo.json()["error"]["param"] == "max_tokens"


def test_streamed_echo_equals_the_whole_answer_for_every_prompt_and_choice(scoring):
    _, http = scoring
    body = {"model": SMOLLM, "prompt": ["Once upon a time", "The sky is"], "echo": True, "logprobs": 3,
            "max_tokens": 5, "temperature": 0, "n": 2}
    whole = http.post(COMP, json=body).json()["choices"]
    assert len(whole) == 4
    merged = {c["index"]: {"text": "", "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
              for c in whole}
    with http.stream("POST", COMP, json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for c in json.loads(line[6:])["choices"]:
                m = merged[c["index"]]
                m["text"] += c["text"]
                for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    m[key] += (c["logprobs"] or {}).get(key, [])
    for c in whole:  # the same tokens and offsets; the numbers within float32 noise (the steps' batches differ)
        m, lp = merged[c["index"]], c["logprobs"]
        assert m["text"] == c["text"] and m["tokens"] == lp["tokens"] and m["text_offset"] == lp["text_offset"]
        assert m["token_logprobs"][0] is None and m["top_logprobs"][0] is None
        assert m["token_logprobs"][1:] == pytest.approx(lp["token_logprobs"][1:], abs=TOL)
        for got, want in zip(m["top_logprobs"][1:], lp["top_logprobs"][1:]):
            assert got.keys() == want.keys() and list(got.values()) == pytest.approx(list(want.values()), abs=TOL)
    # each prompt's own logprobs: the choices of one prompt agree on the echoed part, the two prompts differ
    assert whole[0]["logprobs"]["token_logprobs"][:4] == whole[1]["logprobs"]["token_logprobs"][:4]
    assert whole[2]["text"].startswith("The sky is") and whole[2]["logprobs"]["tokens"][0] != \
        whole[0]["logprobs"]["tokens"][0]


def test_token_id_prompts_are_scored_too(scoring, hf):
    _, http = scoring
    ids = token_ids(http, "One, two, three, four")
    r = http.post(COMP, json={"model": SMOLLM, "prompt": [ids, ids[:3]], "echo": True, "logprobs": 1,
                              "max_tokens": 0}).json()
    assert_matches_hf(hf, ids, r["choices"][0]["logprobs"], 1)
    assert_matches_hf(hf, ids[:3], r["choices"][1]["logprobs"], 1)


# -- lm-evaluation-harness as a real client ----------------------------------------------------------------------

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"), ("Greece", "Athens"), ("Peru", "Lima")]
ARITHMETIC = [("What is 2 plus 3?", "5"), ("What is 10 minus 4?", "6"), ("What is 3 times 3?", "9"),
              ("What is 7 plus 1?", "8")]
TASKS = {
    "ks_capitals": """output_type: multiple_choice
doc_to_text: "The capital of {{country}} is"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
target_delimiter: ""
metric_list:
  - metric: acc
""",
    "ks_arithmetic": """output_type: generate_until
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: " {{answer}}"
generation_kwargs:
  until: ["\\n", "."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""",
}


def _task_rows(name: str) -> list[dict]:
    if name == "ks_capitals":  # each country's capital among four, the right one at a varying place
        cities, rows = [c for _, c in CAPITALS], []
        for i, (country, capital) in enumerate(CAPITALS):
            choices = [" " + c for c in (cities[i + 1:] + cities[:i])[:3]]
            choices.insert(i % 4, " " + capital)
            rows.append({"country": country, "choices": choices, "answer": i % 4})
        return rows
    return [{"question": q, "answer": a} for q, a in ARITHMETIC]


@pytest.fixture(scope="module")
def lm_eval_tasks(tmp_path_factory):
    """Two tasks of our own, local data only: a loglikelihood (multiple choice) and a generate_until one."""
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    for name, body in TASKS.items():
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in _task_rows(name)))
        (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                             f"    test: {data}\ntest_split: test\n{body}metadata:\n  version: 1.0\n")
    return str(folder)


def _evaluate(model: str, model_args: str, include_path: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(TASKS), log_samples=True,
                                   task_manager=TaskManager(include_path=include_path), device="cpu")


def test_lm_eval_local_completions_agrees_with_lm_eval_hf_item_by_item(scoring, hf_folder, lm_eval_tasks,
                                                                      monkeypatch):
    server, _ = scoring
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    served = _evaluate("local-completions", f"model={SMOLLM},base_url={server.url}/v1/completions,"
                       f"tokenizer_backend=huggingface,tokenizer={hf_folder},num_concurrent=2,max_retries=1",
                       lm_eval_tasks)
    reference = _evaluate("hf", f"pretrained={hf_folder},dtype=float32", lm_eval_tasks)
    for name in TASKS:
        ours, theirs = served["samples"][name], reference["samples"][name]
        assert [s["doc_id"] for s in ours] == [s["doc_id"] for s in theirs] and len(ours) == len(_task_rows(name))
        for a, b in zip(ours, theirs):
            if name == "ks_capitals":  # per choice: (loglikelihood, is_greedy)
                assert [r[0][0] for r in a["resps"]] == pytest.approx([r[0][0] for r in b["resps"]], abs=1e-3)
                assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]
            else:
                assert a["filtered_resps"] == b["filtered_resps"]
        metric = "acc,none" if name == "ks_capitals" else "exact_match,none"
        assert served["results"][name][metric] == reference["results"][name][metric]
    assert served["results"]["ks_capitals"]["acc,none"] >= 0.5  # a real model, not noise: it knows capitals
