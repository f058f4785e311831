"""Chat templates and incremental detokenisation."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from models import ChatTemplateError, IncrementalDetokenizer, TemplateSecurityError, Tokenizer


def stream(tokenizer, ids, prompt=()):
    detok = IncrementalDetokenizer(tokenizer, list(prompt))
    pieces = [detok.step(t) for t in ids]
    return pieces, detok.flush()


def test_byte_level_stream_never_splits_a_character(byte_bpe_tokenizer):
    text = "Hi 🙂! naïve café 日本語 — done"
    ids = byte_bpe_tokenizer.encode(text)
    pieces, rest = stream(byte_bpe_tokenizer, ids)
    assert "".join(pieces) + rest == text
    assert rest == ""
    assert all("\ufffd" not in p for p in pieces)
    # emoji and CJK span several byte-level tokens: some steps must have held text back
    assert pieces.count("") > 0


def test_stream_after_prompt_keeps_leading_space(byte_bpe_tokenizer):
    prompt = byte_bpe_tokenizer.encode("Say:")
    ids = byte_bpe_tokenizer.encode(" hello there")
    pieces, _ = stream(byte_bpe_tokenizer, ids, prompt)
    assert "".join(pieces) == " hello there"


def test_flush_emits_an_unfinished_character(byte_bpe_tokenizer):
    # a rare character that byte-level BPE spells with several byte tokens
    text = next(t for t in ("ok 𝄞", "ok 𓀀", "ok 🜲") if len(byte_bpe_tokenizer.encode(t[2:])) > 2)
    ids = byte_bpe_tokenizer.encode(text)
    pieces, rest = stream(byte_bpe_tokenizer, ids[:-1])  # cut inside the character's bytes
    assert "".join(pieces) == "ok "
    assert rest.endswith("\ufffd")


def byte_fallback_tokenizer():
    """A SentencePiece-style BPE with byte-fallback tokens <0xNN>, as Llama 2 / Mistral use."""
    vocab = {"<unk>": 0, "▁a": 1, "b": 2, **{f"<0x{i:02X}>": 3 + i for i in range(256)}}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    return Tokenizer(backend)


def test_byte_fallback_tokens_join_into_characters():
    tok = byte_fallback_tokenizer()
    ids = [1, 2] + [3 + b for b in "é🙂".encode()] + [2]
    pieces, rest = stream(tok, ids)
    assert "".join(pieces) + rest == tok.decode(ids) == "abé🙂b"
    assert all("\ufffd" not in p for p in pieces)


def test_chat_template_raise_exception_and_generation_prompt():
    template = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
                "{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
                "{{ bos_token }}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant]{% endif %}")
    tok = Tokenizer(byte_fallback_tokenizer().backend, bos_token="<s>", chat_template=template)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs) == "<s>[user] hi\n[assistant]"
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == "<s>[user] hi\n"
    with pytest.raises(ChatTemplateError, match="bad role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_template_is_sandboxed():
    tok = Tokenizer(byte_fallback_tokenizer().backend, chat_template="{{ messages.__class__.__mro__ }}")
    with pytest.raises(TemplateSecurityError, match="sandbox"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])
