"""Small random encoders built from real configs, saved as the folders sentence-transformers writes.

- ``save_xlmr_embedder``: multilingual-e5 / bge-m3's XLM-RoBERTa (shrunk to 2 layers of width 256), mean or CLS
  pooling + Normalize, with a SentencePiece-Unigram tokenizer of XLM-R's structure (``<s> <pad> </s> <unk>`` at
  0-3, ``<mask>`` last, Metaspace, ``<s> A </s></s> B </s>``) trained on a few sentences, since the real
  250k-piece file is not installable here.
- ``save_cross_encoder``: ``cross-encoder/ms-marco-MiniLM-L6-v2`` (BERT, MiniLM's real WordPiece tokenizer) or
  ``BAAI/bge-reranker-base`` (XLM-RoBERTa), ``*ForSequenceClassification`` with one label.
Biases and norms are randomised so they are exercised.
"""
from __future__ import annotations

import json
import os
import shutil

import torch

CORPUS = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "Paris is the capital of France.", "Berlin ist die Hauptstadt von Deutschland.", "東京は日本の首都です。",
    "La capitale de la France est Paris.", "Machine learning is fun.", "What is the capital of France?",
    "Le chat est sur la table.", "El perro corre en el parque.", "Der schnelle braune Fuchs springt.",
    "Triton kernels fuse attention.", "kernelserve serves embeddings and rerankers.", "naïve café über",
]


def unigram_tokenizer(vocab_size: int = 600):
    """A Unigram tokenizer laid out as XLM-RoBERTa's tokenizer.json is."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" {2,}", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def _save_xlmr_tokenizer(folder: str, max_length: int) -> int:
    tok = unigram_tokenizer()
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        # the generic fast class reads tokenizer.json as it is (transformers 5's XLMRobertaTokenizer rebuilds its
        # own pre-tokenizer around the vocabulary instead)
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
                   "mask_token": "<mask>", "model_max_length": max_length}, f)
    return tok.get_vocab_size()


def _randomise_vectors(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)


def xlmr_config(vocab_size: int, **extra):
    """xlm-roberta-base's config.json, shrunk in depth and width (head_dim 64 kept)."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=vocab_size, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=512, max_position_embeddings=514, type_vocab_size=1,
                            layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2, **extra)


def _write_sentence_transformers(folder: str, pooling: str, normalize: bool, max_seq_length: int) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump(modules, f)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": 256, "pooling_mode_cls_token": pooling == "cls",
                   "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
                   "pooling_mode_lasttoken": pooling == "lasttoken"}, f)
    with open(os.path.join(folder, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": max_seq_length, "do_lower_case": False}, f)


def save_xlmr_embedder(folder, pooling: str = "mean") -> str:
    from transformers import XLMRobertaModel

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    vocab = _save_xlmr_tokenizer(folder, 512)
    torch.manual_seed(0)
    model = XLMRobertaModel(xlmr_config(vocab), add_pooling_layer=False).eval()
    _randomise_vectors(model)
    model.save_pretrained(folder)
    _write_sentence_transformers(folder, pooling, True, 512)
    return folder


def _spread_logits(model, folder: str, family: str) -> None:
    """A random head gives nearly equal scores; rescale its output layer so the corpus's logits have mean 0
    and standard deviation 2 (sigmoid scores spread over (0.1, 0.9)) and the order means something."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    batch = tok(["What is the capital of France?"] * len(CORPUS), CORPUS, padding=True, return_tensors="pt")
    out = model.classifier if family == "bert" else model.classifier.out_proj
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]
        scale = 2 / logits.std()
        out.weight.mul_(scale)
        out.bias.copy_((out.bias - logits.mean()) * scale)


def save_cross_encoder(folder, family: str, minilm_path: str | None = None) -> str:
    """family "bert" (ms-marco-MiniLM-L6-v2's config, MiniLM's tokenizer) or "xlm-roberta" (bge-reranker)."""
    from transformers import BertConfig, BertForSequenceClassification, XLMRobertaForSequenceClassification

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(1)
    if family == "bert":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            shutil.copy(os.path.join(minilm_path, name), folder)
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512, num_labels=1,
                         architectures=["BertForSequenceClassification"])
        model = BertForSequenceClassification(cfg)
    else:
        vocab = _save_xlmr_tokenizer(folder, 512)
        cfg = xlmr_config(vocab, num_labels=1, architectures=["XLMRobertaForSequenceClassification"])
        model = XLMRobertaForSequenceClassification(cfg)
    model.eval()
    _randomise_vectors(model)
    _spread_logits(model, folder, family)
    model.save_pretrained(folder)
    return folder


def save_qwen3_embedder(folder, byte_bpe_backend, matryoshka: bool = True) -> str:
    """Qwen3-Embedding-0.6B's layout shrunk (2 layers, width 256, head_dim 128, GQA 4:2, q/k norms), saved as the
    real one is: a bare ``Qwen3Model`` checkpoint, last-token pooling + Normalize, a tokenizer whose
    post-processor appends ``<|endoftext|>`` (SmolLM2's byte-level BPE stands in for Qwen's 151k vocabulary)."""
    from tokenizers import processors
    from transformers import Qwen3Config, Qwen3Model

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    tok = byte_bpe_backend.from_str(byte_bpe_backend.to_str())
    eos = "<|endoftext|>"
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", special_tokens=[(eos, tok.token_to_id(eos))])
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "pad_token": eos,
                   "padding_side": "left", "model_max_length": 512}, f)
    cfg = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=128, max_position_embeddings=512,
                      rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      architectures=["Qwen3ForCausalLM"])
    if matryoshka:
        cfg.matryoshka_dimensions = [32, 64, 128, 256]
    torch.manual_seed(3)
    model = Qwen3Model(cfg).eval()
    _randomise_vectors(model)
    model.save_pretrained(folder)
    _write_sentence_transformers(folder, "lasttoken", True, 512)
    return folder


NLLB_LANGUAGES = ["eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn", "zho_Hans"]


def nllb_tokenizer():
    """NLLB's tokenizer.json structure: SentencePiece pieces after ``<s> <pad> </s> <unk>``, the FLORES-200 language
    codes as special tokens after them, ``<mask>`` last, and a post-processor writing ``eng_Latn text </s>``."""
    from tokenizers import processors

    tok = unigram_tokenizer()
    tok.add_special_tokens([*NLLB_LANGUAGES])
    tok.add_special_tokens(["<mask>"])
    eng = tok.token_to_id("eng_Latn")
    tok.post_processor = processors.TemplateProcessing(
        single="eng_Latn $A </s>", pair="eng_Latn $A $B </s>", special_tokens=[("eng_Latn", eng), ("</s>", 2)])
    return tok


def save_nllb(folder, seed: int = 0):
    """facebook/nllb-200-distilled-600M's config shrunk (2 + 2 layers, width 256, head_dim 64) with larger random
    weights (fresh ones give nearly tied beams), and its tokenizer's structure. Returns (folder, transformers model)."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    tok = nllb_tokenizer()
    tok.save(os.path.join(folder, "tokenizer.json"))
    cfg = M2M100Config(vocab_size=tok.get_vocab_size(), d_model=256, encoder_layers=2, decoder_layers=2,
                       encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                       max_position_embeddings=128, scale_embedding=True, activation_function="relu",
                       decoder_start_token_id=2, eos_token_id=2, bos_token_id=0, pad_token_id=1)
    torch.manual_seed(seed)
    model = M2M100ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3 if p.dim() > 1 else 0.1)
    model.save_pretrained(folder)
    return folder, model


def save_modernbert_embedder(folder, minilm_path: str, local_attention: int = 16) -> str:
    """ModernBERT-base's config shrunk (4 layers of width 256: global, local, local, global; head_dim 64), with a
    local window of ``local_attention`` tokens (128 in the real model; 16 here so sentences reach past it), mean
    pooling + Normalize as modernbert-embed; MiniLM's WordPiece tokenizer stands in for its BPE ([CLS] .. [SEP])."""
    from transformers import ModernBertConfig, ModernBertModel

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_path, name), folder)
    cfg = ModernBertConfig(vocab_size=30522, hidden_size=256, intermediate_size=384, num_hidden_layers=4,
                           num_attention_heads=4, global_attn_every_n_layers=3, local_attention=local_attention,
                           max_position_embeddings=512, pad_token_id=0, cls_token_id=101, sep_token_id=102,
                           bos_token_id=101, eos_token_id=102, norm_bias=False, hidden_activation="gelu")
    torch.manual_seed(5)
    model = ModernBertModel(cfg).eval()
    _randomise_vectors(model)
    with torch.no_grad():  # larger q and k: peaked attention, so what the window hides changes the output
        for layer in model.layers:
            layer.attn.Wqkv.weight[: 2 * cfg.hidden_size] *= 6
    model.save_pretrained(folder)
    _write_sentence_transformers(folder, "mean", True, 512)
    return folder


RERANKER_OVERRIDES = {"architectures": ["Qwen3ForSequenceClassification"], "classifier_from_token": ["no", "yes"],
                      "is_original_qwen3_reranker": True}  # what vLLM's docs pass for Qwen3-Reranker


def save_qwen3_reranker(folder, byte_bpe_backend) -> tuple[str, object]:
    """Qwen3-Reranker-0.6B's layout shrunk: a Qwen3ForCausalLM whose "yes" / "no" logits at the last token score
    a (query, document) pair. Returns (folder, the transformers model)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    byte_bpe_backend.save(os.path.join(folder, "tokenizer.json"))
    cfg = Qwen3Config(vocab_size=byte_bpe_backend.get_vocab_size(), hidden_size=256, intermediate_size=512,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=128,
                      max_position_embeddings=512, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
    torch.manual_seed(6)
    model = Qwen3ForCausalLM(cfg).eval()
    _randomise_vectors(model)
    model.save_pretrained(folder)
    return folder, model


MARIAN_CORPUS = CORPUS + [
    "Hello, how are you?", "I would like a cup of coffee.", "The weather is nice today.", "Where is the station?",
    "She reads a book in the garden.", "We are going to the market tomorrow.", "Translation models are small.",
    "Numbers: 1 2 3 4 5, and symbols % & @.", "Ça va très bien, merci.", "¿Dónde está la biblioteca?",
]


def save_marian_tokenizer(folder, languages=(">>fra<<", ">>spa<<")) -> int:
    """opus-mt's tokenizer files: a SentencePiece unigram model trained here with nmt_nfkc normalisation (the real
    ones are not installable) as source.spm and target.spm, and vocab.json laid out as Marian's: </s> 0, <unk> 1,
    the pieces, target-language codes (multilingual models), <pad> last. Returns the vocabulary size."""
    import io

    import sentencepiece as spm

    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(MARIAN_CORPUS * 3), model_writer=model, vocab_size=200,
                                   model_type="unigram", normalization_rule_name="nmt_nfkc", minloglevel=2,
                                   hard_vocab_limit=False)
    for name in ("source.spm", "target.spm"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))]
    vocab = {p: i for i, p in enumerate(["</s>", "<unk>", *pieces, *languages, "<pad>"])}
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "MarianTokenizer", "source_lang": "en", "target_lang": "fr",
                   "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512}, f)
    return len(vocab)


def save_marian(folder, seed: int = 0):
    """Helsinki-NLP/opus-mt-en-ROMANCE's layout shrunk (2 + 2 layers, width 256): SentencePiece files, target codes
    ``>>fra<<`` / ``>>spa<<`` in the vocabulary, the decoder starting from <pad>, which generation_config.json's
    bad_words_ids keeps out of every output (as opus-mt's does). Returns (folder, transformers model)."""
    from transformers import MarianConfig, MarianMTModel

    folder = str(folder)
    vocab = save_marian_tokenizer(folder)
    pad = vocab - 1
    cfg = MarianConfig(vocab_size=vocab, d_model=256, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                       max_position_embeddings=128, scale_embedding=True, activation_function="swish",
                       pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=None,
                       share_encoder_decoder_embeddings=True)
    torch.manual_seed(seed)
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" not in name:
                p.normal_(0, 0.3 if p.dim() > 1 else 0.1)
    model.generation_config.bad_words_ids = [[pad]]
    model.save_pretrained(folder)
    return folder, model
