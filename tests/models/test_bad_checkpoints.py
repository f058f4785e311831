"""A broken checkpoint fails with an error that names the file and the problem."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from models import ModelError, load_model


@pytest.fixture
def tiny_llama(tmp_path, byte_bpe_tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    byte_bpe_tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def test_loads_when_intact(tiny_llama):
    assert load_model(str(tiny_llama)).kind == "generate"


def test_missing_path():
    with pytest.raises(ModelError, match="no/such/dir: no such file or folder"):
        load_model("./no/such/dir")


def test_missing_config(tiny_llama):
    (tiny_llama / "config.json").unlink()
    with pytest.raises(ModelError, match="config.json: missing"):
        load_model(str(tiny_llama))


def test_unknown_model_type(tiny_llama):
    cfg = json.loads((tiny_llama / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (tiny_llama / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="model_type 'mamba' is not supported"):
        load_model(str(tiny_llama))


def test_wrong_shape_names_key_and_shapes(tiny_llama):
    path = tiny_llama / "model.safetensors"
    from safetensors.torch import load_file

    state = load_file(path)
    state["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 100)
    save_file(state, path)
    with pytest.raises(ModelError, match=r"model.safetensors: tensor 'model.layers.0.mlp.down_proj.weight' has shape \[64, 100\]"):
        load_model(str(tiny_llama))


def test_unused_and_missing_keys(tiny_llama):
    from safetensors.torch import load_file

    path = tiny_llama / "model.safetensors"
    state = load_file(path)
    state["model.layers.0.extra.weight"] = torch.zeros(3)
    save_file(state, path)
    with pytest.raises(ModelError, match="'model.layers.0.extra.weight' matches no parameter"):
        load_model(str(tiny_llama))
    del state["model.layers.0.extra.weight"], state["model.norm.weight"]
    save_file(state, path)
    with pytest.raises(ModelError, match="no tensor for parameter 'model.norm.weight'"):
        load_model(str(tiny_llama))


def test_truncated_safetensors(tiny_llama):
    path = tiny_llama / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(str(tiny_llama))


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "phi.gguf"
    writer = gguf.GGUFWriter(str(path), "phi2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match="phi.gguf: GGUF architecture 'phi2' is not supported"):
        load_model(str(path))


def test_not_a_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError, match="broken.gguf: not a readable GGUF file"):
        load_model(str(path))


def test_pickle_bin_is_refused(tiny_llama):
    (tiny_llama / "model.safetensors").unlink()
    # a .bin that would run code if unpickled
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tiny_llama / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(ModelError, match="pytorch_model.bin: not a weights-only PyTorch checkpoint"):
        load_model(str(tiny_llama))


def test_hub_id_without_network_names_the_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="some-org/not-cached-model: could not fetch this hub id"):
        load_model("some-org/not-cached-model")


def test_sharded_safetensors_with_index(tmp_path, byte_bpe_tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64)
    hf = AutoModelForCausalLM.from_config(cfg).eval()
    hf.save_pretrained(tmp_path, max_shard_size="60KB")
    byte_bpe_tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    assert (tmp_path / "model.safetensors.index.json").exists() and len(list(tmp_path.glob("*.safetensors"))) > 1
    ours = load_model(str(tmp_path))
    ids = [1, 5, 9, 33]
    from .helpers import full_logits

    with torch.no_grad():
        torch.testing.assert_close(full_logits(ours.model, ids), hf(torch.tensor([ids])).logits[0], atol=1e-5, rtol=1e-5)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ModelError, match=f"shard {shard.name} is missing"):
        load_model(str(tmp_path))
