"""Copy checkpoint tensors into a model's parameters, key for key, and check that every one fits.

Each architecture declares how checkpoint names map to its parameters
(:class:`CheckpointRules`): renames, projections stacked into one matrix
(``q_proj``/``k_proj``/``v_proj`` -> rows of ``qkv_proj``), tensors stored
transposed (GPT-2's Conv1D) and keys to ignore (buffers such as
``position_ids``). Loading fails — naming the file, the key and the shapes —
on a key that matches no parameter, a shape mismatch, or a parameter left
unfilled.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from .config import ModelError

@dataclass
class QuantParts:
    """A checkpoint weight kept quantized (GGUF blocks, unpacked): uint8 codes ``[N, K]`` and float32
    scales/offsets ``[N, K / group_size]``, ``W = scales * codes + offsets`` group-wise."""
    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor
    bits: int
    group_size: int
    kind: str  # the file's type name, e.g. "Q4_1"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def rows(self, index: torch.Tensor) -> "QuantParts":
        return QuantParts(self.codes[index], self.scales[index], self.offsets[index], self.bits, self.group_size,
                          self.kind)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        from kernels.quant_gemm import dequantize_groups

        return dequantize_groups(self.codes, self.scales, self.offsets, self.group_size, dtype)


NamedTensor = tuple[str, str, "torch.Tensor | QuantParts"]  # (file, checkpoint key, tensor)


@dataclass(frozen=True)
class CheckpointRules:
    # (checkpoint suffix, parameter suffix, shard index): e.g. ("q_proj.weight", "qkv_proj.weight", 0)
    stacked: tuple[tuple[str, str, int], ...] = ()
    renames: tuple[tuple[str, str], ...] = ()  # regex -> replacement, applied first
    transposed: tuple[str, ...] = ()  # regexes of keys stored as [in, out]
    ignored: tuple[str, ...] = ()  # regexes of keys that are not weights
    # (regex whose group 1 is an index, parameter, parts per index, this key's part): per-expert MoE weights
    # stacked into one parameter, e.g. (r"experts\.(\d+)\.w3\.weight$", "experts.w13", 2, 1): expert j's up
    # projection is part 2j + 1. Checked before ``stacked`` (an expert's "gate_proj.weight" is not a dense one).
    indexed: tuple[tuple[str, str, int, int], ...] = ()

    def target(self, key: str) -> tuple[str, int | None]:
        for pattern, repl in self.renames:
            key = re.sub(pattern, repl, key)
        for pattern, param, parts, part in self.indexed:
            found = re.search(pattern, key)
            if found:
                return key[:found.start()] + param, int(found.group(1)) * parts + part
        for suffix, param, shard in self.stacked:
            if key.endswith(suffix):
                return key[: -len(suffix)] + param, shard
        return key, None

    def is_ignored(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.ignored)

    def is_transposed(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.transposed)


def load_weights(model: nn.Module, tensors: Iterable[NamedTensor], rules: CheckpointRules,
                 shard_sizes: dict[str, tuple[int, ...]]) -> None:
    """Fill every parameter of ``model`` from ``tensors``.

    ``shard_sizes[param]`` gives the row counts of a stacked parameter's parts.
    """
    params = dict(model.named_parameters())
    filled: dict[str, set] = {name: set() for name in params}
    kept: dict[str, dict[int | None, QuantParts]] = {}  # quantized parts of Linear weights, by shard
    for file, key, tensor in tensors:
        if rules.is_ignored(key):
            continue
        name, shard = rules.target(key)
        if name not in params:
            raise ModelError(f"{file}: tensor {key!r} matches no parameter of this {type(model).__name__} "
                             f"(looked for {name!r})")
        if rules.is_transposed(key):
            tensor = tensor.t()
        dest = params[name].data
        if shard is not None:
            sizes = shard_sizes[name]
            dest = dest.narrow(0, sum(sizes[:shard]), sizes[shard])
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ModelError(f"{file}: tensor {key!r} has shape {list(tensor.shape)}, but parameter {name!r}"
                             f"{'' if shard is None else f' (part {shard})'} expects {list(dest.shape)}")
        if isinstance(tensor, QuantParts) and _quantizable(model, name):
            kept.setdefault(name, {})[shard] = tensor
        else:
            dest.copy_(tensor.dequantize(dest.dtype) if isinstance(tensor, QuantParts) else tensor)
        filled[name].add(shard)
        if name in kept and filled[name] == _parts(name, shard_sizes):  # packed as soon as complete: the
            _install_quantized(model, name, kept.pop(name), filled[name], params, shard_sizes)  # codes go
    _check_filled(filled, shard_sizes)


def _parts(name: str, shard_sizes) -> set:
    return set(range(len(shard_sizes[name]))) if name in shard_sizes else {None}


def _quantizable(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is the weight of a Linear or an Embedding (which then runs quantized)."""
    from .layers import Embedding, Linear

    path, _, leaf = name.rpartition(".")
    return leaf == "weight" and type(model.get_submodule(path)) in (Linear, Embedding)


def _install_quantized(model, name: str, parts: dict, filled: set, params, shard_sizes) -> None:
    """A Linear (Embedding) whose every part came quantized, in one format, becomes a QuantizedLinear
    (QuantizedEmbedding); a stacked
    weight mixing formats (or quantized and dense parts) is dequantised into its dense parameter."""
    import kernels

    from .layers import replace_linear

    formats = {(p.bits, p.group_size) for p in parts.values()}
    if len(parts) == len(filled) and len(formats) == 1:
        order = sorted(parts, key=lambda s: -1 if s is None else s)
        cat = lambda attr: torch.cat([getattr(parts[s], attr) for s in order])  # noqa: E731
        bits, group = formats.pop()
        kind = "+".join(sorted({p.kind for p in parts.values()}))
        replace_linear(model, name, kernels.pack_codes(cat("codes"), cat("scales"), cat("offsets"), bits, group), kind)
        return
    for shard, part in parts.items():
        dest = params[name].data
        if shard is not None:
            sizes = shard_sizes[name]
            dest = dest.narrow(0, sum(sizes[:shard]), sizes[shard])
        dest.copy_(part.dequantize(dest.dtype))


def _check_filled(filled: dict[str, set], shard_sizes) -> None:
    for name, shards in filled.items():
        need = _parts(name, shard_sizes)
        if shards != need:
            raise ModelError(f"checkpoint has no tensor for parameter {name!r}"
                             f"{'' if name not in shard_sizes else f' (parts {sorted(need - shards)})'}")


def safetensors_files(folder: str) -> list[str]:
    """The ``*.safetensors`` files of a folder: the index's shards, or the single file."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted(set(weight_map.values()))
        missing = [p for p in files if not os.path.exists(os.path.join(folder, p))]
        if missing:
            raise ModelError(f"{index}: shard {missing[0]} is missing")
        return [os.path.join(folder, p) for p in files]
    files = sorted(p for p in os.listdir(folder) if p.endswith(".safetensors"))
    return [os.path.join(folder, p) for p in files]


def iter_safetensors(paths: list[str], dtype: torch.dtype) -> Iterator[NamedTensor]:
    from safetensors import SafetensorError, safe_open

    for path in paths:
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    yield path, key, f.get_tensor(key).to(dtype)
        except SafetensorError as err:
            raise ModelError(f"{path}: not a readable safetensors file ({err})") from None
        except (OSError, RuntimeError) as err:
            raise ModelError(f"{path}: could not read tensors ({err})") from None


def iter_torch_bin(paths: list[str], dtype: torch.dtype) -> Iterator[NamedTensor]:
    """``pytorch_model*.bin`` through ``torch.load(weights_only=True)``: never unpickles code."""
    for path in paths:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError and others for unsafe or broken files
            raise ModelError(f"{path}: not a weights-only PyTorch checkpoint ({err})") from None
        for key, tensor in state.items():
            yield path, key, tensor.to(dtype)
