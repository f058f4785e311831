"""XLM-RoBERTa embedders and cross-encoders (BERT, XLM-R) against sentence-transformers on the same weights."""
from __future__ import annotations

import json

import pytest
import torch

from models import AttentionMetadata, ModelError, load_model
from service.engine import EmbeddingEngine, EncoderInput

from ..encoder_models import CORPUS, save_cross_encoder, save_xlmr_embedder

pytestmark = pytest.mark.slow

QUERY = "What is the capital of France?"
TEXTS = CORPUS + ["hi", "x " * 40, "Ünïcödé 🙂 and unknownzzq words", "the capital " * 30]


@pytest.fixture(scope="module", params=["mean", "cls"])
def xlmr_embedder(request, tmp_path_factory):
    folder = save_xlmr_embedder(tmp_path_factory.mktemp(f"xlmr-{request.param}"), request.param)
    return folder, load_model(folder)


@pytest.fixture(scope="module", params=["bert", "xlm-roberta"])
def cross_encoder(request, tmp_path_factory, minilm_path):
    folder = save_cross_encoder(tmp_path_factory.mktemp(f"ce-{request.param}"), request.param, minilm_path)
    return request.param, folder, load_model(folder)


def test_xlmr_embeddings_match_sentence_transformers(xlmr_embedder):
    from sentence_transformers import SentenceTransformer

    folder, loaded = xlmr_embedder
    assert loaded.kind == "embed" and loaded.config.position_offset == 2
    reference = SentenceTransformer(folder, device="cpu")
    assert loaded.tokenizer.encode_batch(TEXTS) == [reference.tokenizer(t)["input_ids"] for t in TEXTS]
    ours = EmbeddingEngine(loaded).embed_now(loaded.tokenizer.encode_batch(TEXTS))
    cos = torch.nn.functional.cosine_similarity(ours, reference.encode(TEXTS, convert_to_tensor=True).float())
    assert cos.min().item() >= 0.9999, cos


def test_xlmr_longest_input_uses_the_last_position(xlmr_embedder):
    """Positions start at padding_idx + 1 = 2, so 514 position rows hold 512 tokens, not 514."""
    _, loaded = xlmr_embedder
    assert loaded.max_model_len == 512
    ids = [0] + [5] * 510 + [2]
    vec = EmbeddingEngine(loaded).embed_now([ids])
    assert torch.isfinite(vec).all()


def test_xlmr_batched_equals_one_by_one(xlmr_embedder):
    _, loaded = xlmr_embedder
    engine = EmbeddingEngine(loaded)
    ids = loaded.tokenizer.encode_batch(TEXTS)
    batch = engine.embed_now(ids)
    single = torch.cat([engine.embed_now([i]) for i in ids])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=0)  # as MiniLM's: float32 GEMM blocking


def test_cross_encoder_scores_match_sentence_transformers(cross_encoder):
    from sentence_transformers import CrossEncoder

    family, folder, loaded = cross_encoder
    assert loaded.kind == "score" and loaded.config.classifier == ("bert" if family == "bert" else "roberta")
    pairs = [(QUERY, t) for t in TEXTS]
    reference = CrossEncoder(folder, device="cpu")
    expected = torch.tensor(reference.predict(pairs), dtype=torch.float32)
    encoded = loaded.tokenizer.encode_pairs(pairs)
    assert [ids for ids, _ in encoded] == [reference.tokenizer(q, t)["input_ids"] for q, t in pairs]
    ours = EmbeddingEngine(loaded).embed_now([EncoderInput(i, t) for i, t in encoded])[:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    assert ours.argsort(descending=True).tolist() == expected.argsort(descending=True).tolist()
    assert expected.max() - expected.min() > 0.1  # the head is spread enough for the order to mean something


def test_cross_encoder_batched_equals_one_by_one(cross_encoder):
    _, _, loaded = cross_encoder
    engine = EmbeddingEngine(loaded)
    inputs = [EncoderInput(i, t) for i, t in loaded.tokenizer.encode_pairs([(QUERY, t) for t in TEXTS])]
    batch = engine.embed_now(inputs)
    single = torch.cat([engine.embed_now([x]) for x in inputs])
    # float32 GEMMs on the CPU block differently by row count (last bits of a logit); the head's rescaled
    # output layer (std 2) turns those into ~1e-5 of a sigmoid score, up to 5.3e-5 seen on a fresh install:
    # the bound is the one the scores meet against CrossEncoder itself (test above)
    torch.testing.assert_close(batch, single, atol=1e-4, rtol=0)


def test_pair_special_tokens(cross_encoder):
    """BERT: [CLS] a [SEP] b [SEP], segment 1 from b on; XLM-R: <s> a </s></s> b </s>, one segment."""
    family, _, loaded = cross_encoder
    tok = loaded.tokenizer
    (ids, types), = tok.encode_pairs([("a b", "c")])
    a, c = tok.encode("a b", add_special_tokens=False), tok.encode("c", add_special_tokens=False)
    if family == "bert":
        cls, sep = tok.token_id("[CLS]"), tok.token_id("[SEP]")
        assert ids == [cls, *a, sep, *c, sep]
        assert types == [0] * (len(a) + 2) + [1] * (len(c) + 1)
    else:
        assert ids == [0, *a, 2, 2, *c, 2] and set(types) == {0}


def test_truncate_cuts_at_token_ends(cross_encoder):
    _, _, loaded = cross_encoder
    tok = loaded.tokenizer
    text = "Paris is the capital of France."
    full = tok.encode(text, add_special_tokens=False)
    for n in (1, 3, len(full), len(full) + 5):
        cut = tok.truncate(text, n)
        assert text.startswith(cut)
        assert tok.encode(cut, add_special_tokens=False) == full[:n]


def test_classifiers_with_several_labels_are_refused(tmp_path, minilm_path):
    folder = save_cross_encoder(tmp_path, "bert", minilm_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["id2label"] = {"0": "neg", "1": "pos"}
    cfg.pop("num_labels", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="2 labels"):
        load_model(folder)


@pytest.fixture(scope="module")
def qwen3_embedder(tmp_path_factory, byte_bpe_tokenizer):
    from ..encoder_models import save_qwen3_embedder

    folder = save_qwen3_embedder(tmp_path_factory.mktemp("qwen3-emb"), byte_bpe_tokenizer.backend)
    return folder, load_model(folder)


def test_decoder_embedder_matches_sentence_transformers(qwen3_embedder):
    """A *ForCausalLM folder with sentence-transformers files is an embedder: last-token pooling, normalised."""
    from sentence_transformers import SentenceTransformer

    folder, loaded = qwen3_embedder
    assert loaded.kind == "embed" and loaded.pooling.mode == "last" and loaded.model.lm_head is None
    assert loaded.matryoshka_dimensions == (32, 64, 128, 256)
    reference = SentenceTransformer(folder, device="cpu")
    ids = loaded.tokenizer.encode_batch(TEXTS)
    assert ids == [reference.tokenizer(t)["input_ids"] for t in TEXTS] and {i[-1] for i in ids} == {0}
    ours = EmbeddingEngine(loaded).embed_now(ids)
    expected = reference.encode(TEXTS, convert_to_tensor=True).float()
    cos = torch.nn.functional.cosine_similarity(ours, expected)
    assert cos.min().item() >= 0.9999, cos
    batch_single = torch.cat([EmbeddingEngine(loaded).embed_now([i]) for i in ids])
    torch.testing.assert_close(ours, batch_single, atol=1e-5, rtol=0)
    # Matryoshka: the first d features re-normalised, as sentence-transformers' truncate_dim then normalising
    cut = SentenceTransformer(folder, device="cpu", truncate_dim=64).encode(TEXTS, convert_to_tensor=True)
    cut = torch.nn.functional.normalize(cut.float(), dim=-1)
    ours_cut = torch.nn.functional.normalize(ours[:, :64], dim=-1)
    assert torch.nn.functional.cosine_similarity(ours_cut, cut).min().item() >= 0.9999


def test_nllb_language_codes_and_source_swap():
    from models.tokenizer import Tokenizer
    from models.translation import language_codes, with_source_language

    from ..encoder_models import NLLB_LANGUAGES, nllb_tokenizer

    tok = Tokenizer(nllb_tokenizer())
    codes = language_codes(tok)
    assert sorted(codes) == sorted(NLLB_LANGUAGES)
    ids = tok.encode("Paris is the capital of France.")
    assert ids[0] == codes["eng_Latn"] and ids[-1] == 2
    swapped = with_source_language(ids, codes, codes["fra_Latn"])
    assert swapped == [codes["fra_Latn"], *ids[1:]]
    assert with_source_language(ids[1:-1], codes, codes["fra_Latn"]) is None


@pytest.fixture(scope="module")
def modernbert(tmp_path_factory, minilm_path):
    from ..encoder_models import save_modernbert_embedder

    folder = save_modernbert_embedder(tmp_path_factory.mktemp("modernbert"), minilm_path)
    return folder, load_model(folder)


def test_modernbert_embeddings_match_sentence_transformers(modernbert):
    """Local layers (a 16-token window here) and global ones; sentences longer than the window included."""
    from sentence_transformers import SentenceTransformer

    folder, loaded = modernbert
    assert loaded.config.layer_types == ("full", "sliding", "sliding", "full") and loaded.config.local_window == 8
    reference = SentenceTransformer(folder, device="cpu")
    ids = loaded.tokenizer.encode_batch(TEXTS)
    assert max(map(len, ids)) > 3 * 16
    ours = EmbeddingEngine(loaded).embed_now(ids)
    cos = torch.nn.functional.cosine_similarity(ours, reference.encode(TEXTS, convert_to_tensor=True).float())
    assert cos.min().item() >= 0.9999, cos
    single = torch.cat([EmbeddingEngine(loaded).embed_now([i]) for i in ids])
    torch.testing.assert_close(ours, single, atol=1e-5, rtol=0)


def _hidden(loaded, ids):
    with torch.no_grad():
        return loaded.model(torch.tensor(ids), torch.arange(len(ids)), AttentionMetadata.for_sequences([len(ids)]))


def test_modernbert_hidden_states_match_transformers(modernbert):
    """Token by token (pooling averages differences away): the window's effect is far above the tolerance."""
    from transformers import AutoModel

    folder, loaded = modernbert
    hf = AutoModel.from_pretrained(folder).eval()
    for text in (" ".join(TEXTS[:8]), "hi", TEXTS[-1]):
        ids = loaded.tokenizer.encode(text)
        with torch.no_grad():
            expected = hf(torch.tensor([ids])).last_hidden_state[0]
        torch.testing.assert_close(_hidden(loaded, ids), expected, atol=1e-4, rtol=1e-4)


def test_modernbert_window_changes_long_inputs_only(modernbert, tmp_path, minilm_path):
    """The same weights with a window wider than any input give the same embedding for short inputs and a
    different one for long inputs: the window is applied, and only where it cuts."""
    import shutil

    folder, loaded = modernbert
    wide = tmp_path / "wide"
    shutil.copytree(folder, wide)
    cfg = json.loads((wide / "config.json").read_text())
    cfg["local_attention"] = 1024
    cfg.pop("sliding_window", None)
    (wide / "config.json").write_text(json.dumps(cfg))
    wide_model = load_model(str(wide))
    short, long = loaded.tokenizer.encode("hi"), loaded.tokenizer.encode(" ".join(TEXTS[:8]))
    torch.testing.assert_close(_hidden(loaded, short), _hidden(wide_model, short), atol=1e-6, rtol=0)
    # 100x the hidden-state tolerance above: a window applied wrongly would fail that test
    assert (_hidden(loaded, long) - _hidden(wide_model, long)).abs().max() > 1e-2


def test_qwen3_reranker_scores_as_its_model_card(tmp_path, byte_bpe_tokenizer):
    """P(yes) over {no, yes} at the last token of query + document, as Qwen3-Reranker's card computes it."""
    from ..encoder_models import RERANKER_OVERRIDES, save_qwen3_reranker

    folder, hf = save_qwen3_reranker(tmp_path, byte_bpe_tokenizer.backend)
    loaded = load_model(folder, hf_overrides=RERANKER_OVERRIDES)
    assert loaded.kind == "score"
    assert load_model(folder).kind == "generate"  # without the overrides it is the chat model it also is
    tok = loaded.tokenizer
    no, yes = tok.token_id("no"), tok.token_id("yes")
    pairs = [(f"<Query>: {QUERY}\n", f"<Document>: {t}") for t in TEXTS]
    encoded = tok.encode_pairs(pairs)
    ours = EmbeddingEngine(loaded).embed_now([EncoderInput(i, t) for i, t in encoded])[:, 0]
    for (ids, _), score, (q, d) in zip(encoded, ours, pairs):
        assert ids == tok.encode(q) + tok.encode(d)  # the two texts tokenized apart and joined, as vLLM joins them
        with torch.no_grad():
            last = hf(torch.tensor([ids])).logits[0, -1]
        expected = torch.log_softmax(last[[no, yes]], -1)[1].exp()
        assert score.item() == pytest.approx(expected.item(), abs=1e-5)
    with pytest.raises(ModelError, match="two tokens"):
        load_model(folder, hf_overrides={"classifier_from_token": ["yes"]})


def test_marian_tokenizer_equals_transformers(tmp_path):
    """The SentencePiece files converted at load encode as transformers' MarianTokenizer (slow, sentencepiece)
    encodes: normalisation, unknown pieces, extra and trailing spaces, a leading target-language code, </s>."""
    from transformers import MarianTokenizer

    from models.tokenizer import Tokenizer

    from ..encoder_models import MARIAN_CORPUS, save_marian_tokenizer

    save_marian_tokenizer(tmp_path)
    ours, theirs = Tokenizer.from_folder(str(tmp_path)), MarianTokenizer.from_pretrained(str(tmp_path))
    texts = [*MARIAN_CORPUS, "  spaced   out  ", "trailing ", "ＦＵＬＬ width ①", "emoji 🙂 zzq", ">>fra<< Hello there.",
             ">>spa<< ¿Dónde?", "tabs\tand\nnewlines", "x"]
    for text in texts:
        assert ours.encode(text) == theirs(text)["input_ids"], text
    ids = theirs("Hello, how are you?")["input_ids"]
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.eos_token == "</s>" and ours.token_id("<pad>") == ours.vocab_size - 1
