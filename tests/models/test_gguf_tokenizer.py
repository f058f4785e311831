"""GGUF's SentencePiece tokenizer (llama.cpp's ``llama`` type: Llama 2, Mistral, Mixtral, Phi-3, Gemma) against
sentencepiece itself: a BPE model trained here, written as llama.cpp's converter writes its vocabulary (pieces,
scores, token types), read back by models/gguf_file.py."""
import pytest

from models import gguf_file

spm = pytest.importorskip("sentencepiece")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs!",
    "Sphinx of black quartz, judge my vow.", "How vexingly quick daft zebras jump; 42 times, in 2024.",
    "Le cœur a ses raisons que la raison ne connaît point.", "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "def reverse(xs):\n    return xs[::-1]\n", "tokens, tokenizers and tokenization tokenize text",
] * 40
TEXTS = ["Hello world", "The quick brown fox", " leading space", "two  spaces and\ttab", "trailing ",
         "naïve café — déjà vu", "emoji 🙂 and 漢字 fall back to bytes", "line\nbreaks\n\nkept", "x", "",
         "jumps over the lazy dog, 1234567890"]


def llama_cpp_types(sp) -> list[int]:
    """llama.cpp's token types for a SentencePiece vocabulary (convert_hf_to_gguf's _create_vocab_sentencepiece)."""
    def kind(i):
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_unused(i):
            return 5
        if sp.is_byte(i):
            return 6
        return 1
    return [kind(i) for i in range(sp.get_piece_size())]


@pytest.fixture(scope="module", params=[True, False], ids=["space-prefix", "no-space-prefix"])
def trained(request, tmp_path_factory):
    """A SentencePiece BPE model with byte fallback and no normalisation (as Llama 2's and Gemma's), with or without
    the dummy prefix
    (Gemma's converter writes add_space_prefix false), and the GGUF holding its vocabulary."""
    import gguf

    folder = tmp_path_factory.mktemp("spm")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "m"), model_type="bpe",
                                   vocab_size=400, byte_fallback=True, add_dummy_prefix=request.param,
                                   character_coverage=1.0, bos_id=1, eos_id=2, unk_id=0, minloglevel=2,
                                   # as Llama 2's and Gemma's models: text kept as written (llama.cpp normalises
                                   # nothing but spaces)
                                   remove_extra_whitespaces=False, normalization_rule_name="identity")
    sp = spm.SentencePieceProcessor(model_file=str(folder / "m.model"))
    path = str(folder / "tok.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    writer.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    writer.add_token_types(llama_cpp_types(sp))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_space_prefix(request.param)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sp, gguf_file.gguf_tokenizer(gguf_file.open_gguf(path), path)


@pytest.mark.parametrize("text", TEXTS)
def test_sentencepiece_ids_match(trained, text):
    sp, ours = trained
    assert ours.encode(text) == sp.encode(text)


def test_sentencepiece_round_trip_and_specials(trained):
    sp, ours = trained
    for text in TEXTS:
        assert ours.decode(sp.encode(text)) == sp.decode(sp.encode(text))
    assert ours.bos_token == "<s>" and ours.eos_token == "</s>"
    assert ours.encode("<s>hi</s>") == [1] + sp.encode("hi") + [2]  # control tokens matched whole


def test_unknown_tokenizer_type_is_refused(tmp_path):
    import gguf

    path = str(tmp_path / "t.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("rwkv")
    writer.add_token_list(["a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(gguf_file.ModelError, match="'rwkv' is not supported"):
        gguf_file.gguf_tokenizer(gguf_file.open_gguf(path), path)
