"""MarianMT's tokenizer files (``source.spm``, ``target.spm``, ``vocab.json``) as a ``tokenizers`` pipeline.

opus-mt folders ship SentencePiece models and no ``tokenizer.json`` (transformers has no fast Marian
tokenizer). transformers' ``MarianTokenizer`` splits text with the *source* SentencePiece model, maps each piece
through the shared ``vocab.json`` (unknown pieces to ``<unk>``) and appends ``</s>``; a leading target-language
code (``>>fra<<``, multilingual models) stays one token. The same pipeline here: a Unigram model over
``vocab.json``'s ids scored by the source model (pieces it lacks can be decoded, never produced), its
normalisation (the precompiled character map), Metaspace, ``$A </s>``. Output ids are target-side pieces of the
same vocabulary, decoded by joining pieces (what ``target.spm`` does for them).
"""
from __future__ import annotations

import json
import os
import re

from .config import ModelError

LANGUAGE_CODE = re.compile(r"^>>[a-zA-Z_]{2,12}<<$")


def _spm_model(path: str):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as err:  # the server's dependencies include both; a bare GPU image may not
        raise ModelError(f"{path}: reading a SentencePiece model needs the sentencepiece and protobuf packages "
                         f"({err})") from None
    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def marian_backend(folder: str):
    """A ``tokenizers.Tokenizer`` equal to transformers' MarianTokenizer on this folder's files."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    with open(os.path.join(folder, "vocab.json")) as f:
        vocab: dict[str, int] = json.load(f)
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ModelError(f"{folder}/vocab.json: ids must be 0..{len(vocab) - 1}, each once")
    source = _spm_model(os.path.join(folder, "source.spm"))
    scores = {p.piece: p.score for p in source.pieces}
    floor = min(scores.values(), default=0.0) - 100.0  # pieces only the target side has: never chosen here
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    for special in ("</s>", "<unk>", "<pad>"):
        if special not in vocab:
            raise ModelError(f"{folder}/vocab.json: no {special}")
    tok = Tokenizer(models.Unigram([(piece, scores.get(piece, floor)) for piece, _ in by_id], unk_id=vocab["<unk>"],
                                   byte_fallback=False))
    steps = [normalizers.Replace(Regex(" {2,}"), " ")]
    charsmap = source.normalizer_spec.precompiled_charsmap
    if charsmap:
        steps.insert(0, normalizers.Precompiled(charsmap))
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Strip()])  # SentencePiece trims the text's ends
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = ["</s>", "<unk>", "<pad>", *(p for p in vocab if LANGUAGE_CODE.match(p))]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", vocab["</s>"])])
    return tok
