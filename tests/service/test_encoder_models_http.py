"""Encoder models on a live server. /v1/rerank (and /rerank, /v2/rerank) and /v1/score: cross-encoders (XLM-R,
BERT) scored as sentence-transformers scores them, embedding models by cosine similarity, the error rules,
metrics, the Cohere SDK, and a LangChain retrieval pipeline (embeddings, vector store, then rerank through the
endpoint). /v1/embeddings from a decoder embedder (Qwen3-Embedding layout) with Matryoshka ``dimensions``."""
from __future__ import annotations

import json

import httpx
import pytest
import torch

from ..conftest import API_KEY, MINILM, SMOLLM, Server
from ..encoder_models import (RERANKER_OVERRIDES, save_cross_encoder, save_qwen3_embedder, save_qwen3_reranker,
                              save_xlmr_embedder)

pytestmark = pytest.mark.slow

QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "Le chat est sur la table.", "Berlin ist die Hauptstadt von Deutschland.",
        "Machine learning is fun.", "La capitale de la France est Paris.", "東京は日本の首都です。"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, minilm_path, smollm):
    root = tmp_path_factory.mktemp("rerank")
    return {"emb": save_xlmr_embedder(root / "emb"), "rr": save_cross_encoder(root / "rr", "xlm-roberta"),
            "rr-bert": save_cross_encoder(root / "rr-bert", "bert", minilm_path),
            "qwen3-emb": save_qwen3_embedder(root / "qwen3-emb", smollm.tokenizer.backend),
            "qwen3-rr": save_qwen3_reranker(root / "qwen3-rr", smollm.tokenizer.backend)[0]}


@pytest.fixture(scope="module")
def rerank_server(folders):
    server = Server(*[a for name, f in folders.items() for a in ("--model", f"{name}={f}")], "--api-key", API_KEY,
                    "--hf-overrides", "qwen3-rr=" + json.dumps(RERANKER_OVERRIDES))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rhttp(rerank_server):
    with httpx.Client(base_url=rerank_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


def cross_encoder_scores(folder, pairs) -> list[float]:
    from sentence_transformers import CrossEncoder

    return CrossEncoder(folder, device="cpu").predict(pairs).tolist()


@pytest.mark.parametrize("model", ["rr", "rr-bert"])
def test_rerank_matches_cross_encoder(rhttp, folders, model):
    expected = cross_encoder_scores(folders[model], [(QUERY, d) for d in DOCS])
    body = rhttp.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCS}).json()
    assert body["model"] == model and body["id"].startswith("rerank-")
    results = body["results"]
    assert [r["index"] for r in results] == sorted(range(len(DOCS)), key=lambda i: -expected[i])
    for r in results:
        assert r["relevance_score"] == pytest.approx(expected[r["index"]], abs=1e-4)
        assert r["document"] == {"text": DOCS[r["index"]]}
    assert body["usage"]["total_tokens"] > len(DOCS) * 4


def test_rerank_top_n_paths_and_document_objects(rhttp):
    full = rhttp.post("/v1/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS}).json()["results"]
    for path in ("/rerank", "/v2/rerank"):
        body = rhttp.post(path, json={"model": "rr", "query": QUERY, "documents": [{"text": d} for d in DOCS],
                                      "top_n": 2, "return_documents": False}).json()
        assert body["results"] == [{k: v for k, v in r.items() if k != "document"} for r in full[:2]]


def test_max_tokens_per_doc_scores_the_cut_documents(rhttp, folders):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folders["rr"])
    cut = [tok.decode(tok(d, add_special_tokens=False)["input_ids"][:3]) for d in DOCS]
    body = rhttp.post("/v1/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS,
                                          "max_tokens_per_doc": 3}).json()
    whole = rhttp.post("/v1/rerank", json={"model": "rr", "query": QUERY, "documents": cut}).json()
    by_index = {r["index"]: r for r in whole["results"]}
    for r in body["results"]:
        assert r["document"]["text"] == DOCS[r["index"]]  # the document as sent comes back
        assert r["relevance_score"] == pytest.approx(by_index[r["index"]]["relevance_score"], abs=1e-6)


def test_score_one_to_many_and_pairs(rhttp, folders):
    pairs = [(QUERY, d) for d in DOCS]
    expected = cross_encoder_scores(folders["rr-bert"], pairs)
    body = rhttp.post("/v1/score", json={"model": "rr-bert", "text_1": QUERY, "text_2": DOCS}).json()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == list(range(len(DOCS)))
    assert [d["score"] for d in body["data"]] == pytest.approx(expected, abs=1e-4)
    zipped = rhttp.post("/score", json={"model": "rr-bert", "text_1": [QUERY] * 2 + ["hi"],
                                        "text_2": DOCS[:2] + ["hello"]}).json()["data"]
    assert [d["score"] for d in zipped] == pytest.approx(
        expected[:2] + cross_encoder_scores(folders["rr-bert"], [("hi", "hello")]), abs=1e-4)


def test_embedding_model_scores_by_cosine(rhttp, folders):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(folders["emb"], device="cpu")
    q, d = st.encode([QUERY], convert_to_tensor=True), st.encode(DOCS, convert_to_tensor=True)
    expected = torch.nn.functional.cosine_similarity(q, d).tolist()
    body = rhttp.post("/v1/score", json={"model": "emb", "text_1": QUERY, "text_2": DOCS}).json()
    assert [x["score"] for x in body["data"]] == pytest.approx(expected, abs=1e-4)
    ranked = rhttp.post("/v1/rerank", json={"model": "emb", "query": QUERY, "documents": DOCS}).json()["results"]
    assert [r["index"] for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -expected[i])


def test_minilm_on_the_default_server_reranks_by_cosine(http, minilm_path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(minilm_path, device="cpu")
    expected = (st.encode(DOCS, convert_to_tensor=True) @ st.encode(QUERY, convert_to_tensor=True)).tolist()
    ranked = http.post("/v1/rerank", json={"model": MINILM, "query": QUERY, "documents": DOCS}).json()["results"]
    assert [r["index"] for r in ranked] == sorted(range(len(DOCS)), key=lambda i: -expected[i])
    assert [r["relevance_score"] for r in ranked] == pytest.approx(sorted(expected, reverse=True), abs=1e-4)
    refused = http.post("/v1/rerank", json={"model": SMOLLM, "query": QUERY, "documents": DOCS})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_supported"


@pytest.mark.parametrize("path,body,param,code", [
    ("/v1/rerank", {"query": QUERY, "documents": []}, "documents", None),
    ("/v1/rerank", {"query": QUERY, "documents": ["a", ""]}, "documents", None),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": -1}, "top_n", None),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "max_tokens_per_doc": 0}, "max_tokens_per_doc", None),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"] * 2049}, "documents", None),
    ("/v1/rerank", {"query": QUERY, "documents": ["word " * 600]}, "documents", "context_length_exceeded"),
    ("/v1/rerank", {"query": QUERY, "documents": [3]}, "documents", None),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "rank_fields": ["x"]}, "rank_fields", None),
    ("/v1/score", {"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, "text_2", None),
    ("/v1/score", {"text_1": [], "text_2": "a"}, "text_1", None),
    ("/v1/score", {"text_1": "a", "text_2": "\ud800"}, None, None),
])
def test_bad_requests_are_400s(rhttp, path, body, param, code):
    # json.dumps escapes a lone surrogate as \\ud800 (httpx's json= cannot encode it)
    r = rhttp.post(path, content=json.dumps({"model": "rr", **body}), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert param in str(error["param"]) or param in error["message"]
    if code:
        assert error["code"] == code
    assert rhttp.get("/health").status_code == 200


def test_model_routing(rhttp):
    r = rhttp.post("/v1/embeddings", json={"model": "rr", "input": "x"})
    assert r.status_code == 400 and "/v1/rerank" in r.json()["error"]["message"]
    unnamed = rhttp.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "model"  # three rerankers here
    cards = {m["id"]: m["capabilities"] for m in rhttp.get("/v1/models").json()["data"]}
    assert cards == {"emb": ["embeddings", "rerank", "score"], "rr": ["rerank", "score"],
                     "rr-bert": ["rerank", "score"], "qwen3-emb": ["embeddings", "rerank", "score"],
                     "qwen3-rr": ["rerank", "score"]}


def test_metrics_count_requests_and_batches(rhttp, rerank_server):
    before = _metric(rhttp, 'kernelserve:score_requests_total{endpoint="rerank",model_name="rr"}')
    inputs = _metric(rhttp, 'kernelserve:embedding_inputs_total{model_name="rr"}')
    rhttp.post("/v1/rerank", json={"model": "rr", "query": QUERY, "documents": DOCS}).raise_for_status()
    assert _metric(rhttp, 'kernelserve:score_requests_total{endpoint="rerank",model_name="rr"}') == before + 1
    assert _metric(rhttp, 'kernelserve:embedding_inputs_total{model_name="rr"}') == inputs + len(DOCS)


def _metric(client, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_cohere_sdk_v2_rerank(rerank_server, folders):
    import cohere

    client = cohere.ClientV2(api_key=API_KEY, base_url=rerank_server.url)
    expected = cross_encoder_scores(folders["rr"], [(QUERY, d) for d in DOCS])
    result = client.rerank(model="rr", query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in result.results] == sorted(range(len(DOCS)), key=lambda i: -expected[i])[:3]
    assert [r.relevance_score for r in result.results] == pytest.approx(sorted(expected, reverse=True)[:3], abs=1e-4)


def test_langchain_retrieval_then_rerank(rerank_server, folders):
    """Embed documents into a vector store through /v1/embeddings, retrieve, rerank through /v2/rerank."""
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model="emb", base_url=rerank_server.url + "/v1", api_key=API_KEY,
                                  check_embedding_ctx_length=False, max_retries=0)
    store = InMemoryVectorStore.from_documents([Document(d, metadata={"i": i}) for i, d in enumerate(DOCS)], embeddings)
    retrieved = store.as_retriever(search_kwargs={"k": 4}).invoke(QUERY)
    assert len(retrieved) == 4
    reranker = CohereRerank(model="rr", top_n=2, base_url=rerank_server.url, cohere_api_key=API_KEY)
    reranked = reranker.compress_documents(retrieved, QUERY)
    expected = cross_encoder_scores(folders["rr"], [(QUERY, d.page_content) for d in retrieved])
    best = sorted(range(4), key=lambda i: -expected[i])[:2]
    assert [d.metadata["i"] for d in reranked] == [retrieved[i].metadata["i"] for i in best]
    assert [d.metadata["relevance_score"] for d in reranked] == pytest.approx([expected[i] for i in best], abs=1e-4)


def test_readme_curl_examples_answer_as_shown(http):
    """README's rerank and score curl commands, sent as written to the default models, give the scores shown."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    examples = re.findall(r"curl http://127\.0\.0\.1:8000(/v1/(?:rerank|score)) .*?-d '(.*?)'\n# (.*?)\n", text, re.S)
    assert [path for path, _, _ in examples] == ["/v1/rerank", "/v1/score"]
    for path, body, shown in examples:
        answer = http.post(path, json=json.loads(body)).json()
        score = answer["results"][0]["relevance_score"] if path == "/v1/rerank" else answer["data"][0]["score"]
        assert f"{score:.3f}" in shown, (answer, shown)


def test_decoder_embedder_with_matryoshka_dimensions(rerank_server, folders):
    import openai
    from sentence_transformers import SentenceTransformer

    client = openai.OpenAI(base_url=rerank_server.url + "/v1", api_key=API_KEY, max_retries=0)
    full = SentenceTransformer(folders["qwen3-emb"], device="cpu").encode(DOCS, convert_to_tensor=True).float()
    got = torch.tensor([d.embedding for d in client.embeddings.create(model="qwen3-emb", input=DOCS).data])
    assert torch.nn.functional.cosine_similarity(got, full).min().item() >= 0.9999
    for size in (32, 128):
        cut = torch.tensor([d.embedding for d in
                            client.embeddings.create(model="qwen3-emb", input=DOCS, dimensions=size).data])
        assert cut.shape == (len(DOCS), size)
        torch.testing.assert_close(cut.norm(dim=-1), torch.ones(len(DOCS)), atol=1e-6, rtol=0)
        expected = torch.nn.functional.normalize(full[:, :size], dim=-1)
        assert torch.nn.functional.cosine_similarity(cut, expected).min().item() >= 0.9999
    with pytest.raises(openai.BadRequestError, match="Matryoshka sizes .32, 64, 128, 256."):
        client.embeddings.create(model="qwen3-emb", input="x", dimensions=100)
    with pytest.raises(openai.BadRequestError, match="not trained for truncated"):
        client.embeddings.create(model="emb", input="x", dimensions=64)


def test_qwen3_reranker_served_with_hf_overrides(rhttp, folders):
    """Qwen3-Reranker's documented prompt, formatted by the client as vLLM's example does; the served scores are
    P(yes) from transformers on the same weights."""
    from transformers import AutoModelForCausalLM

    from models.tokenizer import Tokenizer

    hf = AutoModelForCausalLM.from_pretrained(folders["qwen3-rr"]).eval()
    tok = Tokenizer.from_folder(folders["qwen3-rr"])
    prefix = "<|im_start|>system\nJudge whether the Document meets the requirements.<|im_end|>\n<|im_start|>user\n"
    query = f"{prefix}<Instruct>: Given a web search query, retrieve relevant passages\n<Query>: {QUERY}\n"
    docs = [f"<Document>: {d}<|im_end|>\n<|im_start|>assistant\n" for d in DOCS]
    no, yes = tok.token_id("no"), tok.token_id("yes")
    expected = []
    for d in docs:
        with torch.no_grad():
            last = hf(torch.tensor([tok.encode(query) + tok.encode(d)])).logits[0, -1]
        expected.append(torch.softmax(last[[no, yes]], -1)[1].item())
    body = rhttp.post("/v1/rerank", json={"model": "qwen3-rr", "query": query, "documents": docs}).json()
    assert [r["index"] for r in body["results"]] == sorted(range(len(docs)), key=lambda i: -expected[i])
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)
