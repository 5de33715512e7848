"""Tensor names and shapes: ours, transformers' and the original release's, and the maps between them.

transformers (and the original TensorFlow code) store projections as ``Conv1D`` weights of shape
``(in, out)``; ours are ``nn.Linear`` weights ``(out, in)``, so those are transposed both ways
(exactly: a transpose moves values, it never rounds them). The release adds a leading axis of
1 to each conv weight, ``(1, in, out)``. Everything else maps one to one.
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig

# (our module, transformers' module, is a projection) in the release's per-layer order.
LAYER_PARTS = (
    ("attn.qkv", "attn.c_attn", True),
    ("attn.proj", "attn.c_proj", True),
    ("ln_1", "ln_1", False),
    ("mlp.fc", "mlp.c_fc", True),
    ("mlp.proj", "mlp.c_proj", True),
    ("ln_2", "ln_2", False),
)
EMBEDDINGS = {"gpt1": ("tokens_embed", "positions_embed"), "gpt2": ("wte", "wpe")}
HF_BASE = "transformer."
HF_LM_HEAD = "lm_head.weight"
HF_MC_HEAD = ("multiple_choice_head.summary.weight", "multiple_choice_head.summary.bias")
OUR_HEAD = ("head.weight", "head.bias")
# Buffers transformers may store beside the weights: causal masks and position indices.
HF_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", "position_ids")


def name_pairs(config: ModelConfig) -> list[tuple[str, str, bool]]:
    """``(our name, transformers' name without 'transformer.', transposed)`` for every decoder
    tensor, embeddings first, then each layer in the release's order."""
    tok, pos = EMBEDDINGS[config.arch]
    pairs = [("tok_emb.weight", f"{tok}.weight", False), ("pos_emb.weight", f"{pos}.weight", False)]
    for i in range(config.n_layer):
        for ours, theirs, projection in LAYER_PARTS:
            pairs.append((f"blocks.{i}.{ours}.weight", f"h.{i}.{theirs}.weight", projection))
            pairs.append((f"blocks.{i}.{ours}.bias", f"h.{i}.{theirs}.bias", False))
    if config.arch == "gpt2":
        pairs += [("ln_f.weight", "ln_f.weight", False), ("ln_f.bias", "ln_f.bias", False)]
    return pairs


def our_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor of :class:`~gpt1cli.model.gpt.GPT` for ``config``, in its state-dict
    order (written out rather than built: a test holds the two together)."""
    d, f = config.d_model, config.d_ff
    linear = {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc": (f, d), "mlp.proj": (d, f)}
    shapes = {"tok_emb.weight": (config.vocab_size, d), "pos_emb.weight": (config.n_ctx, d)}
    for i in range(config.n_layer):
        for module in ("attn.qkv", "attn.proj", "ln_1", "mlp.fc", "mlp.proj", "ln_2"):
            out = linear[module][0] if module in linear else d
            shapes[f"blocks.{i}.{module}.weight"] = linear.get(module, (d,))
            shapes[f"blocks.{i}.{module}.bias"] = (out,)
    if config.arch == "gpt2":
        shapes.update({"ln_f.weight": (d,), "ln_f.bias": (d,)})
    return shapes


def hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """transformers' names (without 'transformer.') and shapes for ``config``."""
    ours = our_shapes(config)
    return {theirs: ours[name][::-1] if projection else ours[name] for name, theirs, projection in name_pairs(config)}


def is_hf_buffer(name: str) -> bool:
    return name.endswith(HF_BUFFER_SUFFIXES)


def to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our decoder tensors under transformers' names (with 'transformer.'), projections transposed."""
    out = {}
    for ours, theirs, projection in name_pairs(config):
        tensor = state[ours]
        out[HF_BASE + theirs] = (tensor.t() if projection else tensor).contiguous()
    return out


def from_hf(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """transformers' decoder tensors (names without 'transformer.') under our names, as float32."""
    out = {}
    for ours, theirs, projection in name_pairs(config):
        tensor = tensors[theirs]
        out[ours] = (tensor.t() if projection else tensor).contiguous().to(torch.float32)
    return out


def release_shapes(n_ctx: int, n_vocab: int, d_model: int, d_ff: int, n_layer: int) -> list[tuple[int, ...]]:
    """The original release's ``params_shapes.json`` for these sizes."""
    config = ModelConfig(vocab_size=n_vocab, n_ctx=n_ctx, n_layer=n_layer, n_head=1, d_model=d_model, d_ff=d_ff)
    ours = our_shapes(config)
    shapes = [ours["pos_emb.weight"], ours["tok_emb.weight"]]
    for name, _, projection in name_pairs(config)[2:]:
        shapes.append((1, *ours[name][::-1]) if projection else ours[name])
    return shapes


def from_release(arrays: list, config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our decoder tensors from the release's arrays (already split and reshaped, in file order)."""
    pairs = name_pairs(config)
    ordered = [arrays[1], arrays[0], *arrays[2:]]  # the release stores positions before tokens
    out = {}
    for (ours, _, projection), array in zip(pairs, ordered):
        tensor = torch.from_numpy(array)
        out[ours] = (tensor[0].t() if projection else tensor).contiguous().to(torch.float32)
    return out


def numel(shape) -> int:
    return math.prod(int(s) for s in shape)
