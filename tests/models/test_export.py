"""The exported Hugging Face folder reloads to the same model, in kernelserve and in transformers."""
from __future__ import annotations

import torch

from models import load_model
from models.export import export_hf_folder

from .helpers import full_logits


def test_export_round_trip(smollm, tmp_path):
    folder = export_hf_folder(smollm, str(tmp_path / "smollm2-hf"))
    again = load_model(folder)
    ids = smollm.tokenizer.encode(smollm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}]))
    assert again.tokenizer.encode(again.tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}])) == ids
    assert torch.equal(full_logits(again.model, ids), full_logits(smollm.model, ids))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits[0], full_logits(smollm.model, ids), atol=2e-3, rtol=0)
