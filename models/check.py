"""Check a checkpoint against Hugging Face transformers: ``python -m models.check PATH_OR_GGUF``.

Loads the model in kernelserve and in transformers (fp32, CPU) and prints, for
decoders, the largest logit difference over the prompt and whether greedy
generation agrees; for encoders, the cosine between the pooled embeddings.
Needs ``transformers`` (and ``sentence-transformers`` for encoders).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from .config import ModelError
from .loader import load_model, resolve_source
from .metadata import AttentionMetadata


def _hf_decoder(path: str):
    from transformers import AutoModelForCausalLM

    if os.path.isfile(path):
        return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                    dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def check_decoder(loaded, path: str, prompt: str, new_tokens: int) -> bool:
    tok = loaded.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}]) if tok.chat_template else prompt
    ids = tok.encode(text)
    hf = _hf_decoder(path)
    model = loaded.model
    ours = model.logits(model(torch.tensor(ids), torch.arange(len(ids)), AttentionMetadata.for_sequences([len(ids)])))
    theirs = hf(torch.tensor([ids])).logits[0].float()
    diff = (ours - theirs).abs().max().item()
    generated = list(ids)
    for _ in range(new_tokens):  # plain recomputation: the check should not depend on the engine
        n = len(generated)
        h = model(torch.tensor(generated), torch.arange(n), AttentionMetadata.for_sequences([n]))
        generated.append(int(model.logits(h[-1:]).argmax()))
        if generated[-1] in loaded.eos_token_ids:
            break
    reference = hf.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                            eos_token_id=list(loaded.eos_token_ids) or None, pad_token_id=0)[0].tolist()
    same = generated == reference
    print(f"positions: {len(ids)}  max |logit difference|: {diff:.3e}")
    print(f"greedy generation ({len(generated) - len(ids)} tokens) identical to transformers: {same}")
    print(f"kernelserve: {tok.decode(generated[len(ids):])!r}")
    return diff <= 2e-3 and same


@torch.no_grad()
def check_encoder(loaded, path: str, prompt: str) -> bool:
    from sentence_transformers import SentenceTransformer

    sentences = [prompt, "A second, different sentence.", "short"]
    ids = loaded.tokenizer.encode_batch(sentences)
    lengths = [len(i) for i in ids]
    hidden = loaded.model(torch.tensor(sum(ids, [])), torch.cat([torch.arange(n) for n in lengths]),
                          AttentionMetadata.for_sequences(lengths))
    ours = loaded.pooling(hidden, lengths)
    theirs = SentenceTransformer(path, device="cpu").encode(sentences, convert_to_tensor=True).float()
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    print("cosine with sentence-transformers: " + ", ".join(f"{c:.6f}" for c in cos.tolist()))
    return bool(cos.min() >= 0.9999)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a Hugging Face folder, a .gguf file or a default model name")
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        path = resolve_source(args.model)
        loaded = load_model(path, quantization="none")  # transformers dequantises GGUF files too
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model}: {loaded.config.arch}, {loaded.kind}, {sum(p.numel() for p in loaded.model.parameters()):,} parameters")
    ok = check_encoder(loaded, path, args.prompt) if loaded.kind == "embed" else \
        check_decoder(loaded, path, args.prompt, args.new_tokens)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
