"""The GPT decoder: GPT-1 (post-LN) and GPT-2 (pre-LN) blocks over the ops interface.

Attention, LayerNorm and the LM loss go through :mod:`gpt1cli.model.ops`, so the same module
runs the fused Triton kernels on CUDA and PyTorch elsewhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from . import ops


class KVCache:
    """Keys and values of past positions, per layer, for incremental decoding."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    @property
    def length(self) -> int:
        return 0 if self.keys[0] is None else self.keys[0].shape[-2]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``i`` becomes old row ``index[i]``: rows may repeat (a beam with two children, one
        context shared by several candidates) or go."""
        for layer, keys in enumerate(self.keys):
            if keys is not None:
                self.keys[layer] = keys.index_select(0, index)
                self.values[layer] = self.values[layer].index_select(0, index)


class LayerNorm(nn.Module):
    """LayerNorm whose forward can fold in a residual add (one fused kernel on CUDA)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, return_sum: bool = False):
        return ops.add_layer_norm(x, residual, self.weight, self.bias, eps=self.eps, return_sum=return_sum)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, window: int | None = None):
        super().__init__()
        self.n_head = config.n_head
        self.window = window
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.attn_dropout = config.attn_dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, *, layer: int, cache: KVCache | None = None, key_lengths=None):
        batch, time, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, time, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.append(layer, k, v)
        dropout_p = self.attn_dropout if self.training else 0.0
        y = ops.causal_attention(q, k, v, dropout_p=dropout_p, key_lengths=key_lengths, window=self.window)
        y = y.transpose(1, 2).reshape(batch, time, width)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        # The tanh approximation is the GELU of the original GPT-1 code and weights.
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """One Transformer block; ``post_ln`` selects GPT-1's ordering, otherwise GPT-2's."""

    def __init__(self, config: ModelConfig, window: int | None = None):
        super().__init__()
        self.post_ln = config.arch == "gpt1"
        self.attn = CausalSelfAttention(config, window)
        self.ln_1 = LayerNorm(config.d_model, config.layer_norm_eps)
        self.mlp = MLP(config)
        self.ln_2 = LayerNorm(config.d_model, config.layer_norm_eps)

    def forward(self, x, *, layer: int, cache=None, key_lengths=None):
        if self.post_ln:
            # GPT-1: x = LN(x + attn(x)); x = LN(x + mlp(x)), each add fused into its LayerNorm.
            x = self.ln_1(self.attn(x, layer=layer, cache=cache, key_lengths=key_lengths), x)
            return self.ln_2(self.mlp(x), x)
        # GPT-2: x = x + attn(LN(x)); x = x + mlp(LN(x)); the middle add is fused into ln_2.
        attn_out = self.attn(self.ln_1(x), layer=layer, cache=cache, key_lengths=key_lengths)
        normed, x = self.ln_2(attn_out, x, return_sum=True)
        return x + self.mlp(normed)


class GPT(nn.Module):
    """Decoder-only Transformer with learned positions and an output tied to the token embedding."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.n_ctx, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, config.layer_window(i)) for i in range(config.n_layer))
        self.ln_f = LayerNorm(config.d_model, config.layer_norm_eps) if config.arch == "gpt2" else None
        self.apply(self._init_weights)
        if config.arch == "gpt2":
            # GPT-2 scales the projections that write into the residual stream by 1/sqrt(N).
            std = 0.02 / math.sqrt(2 * config.n_layer)
            for block in self.blocks:
                nn.init.normal_(block.attn.proj.weight, mean=0.0, std=std)
                nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        cache: KVCache | None = None,
        key_lengths=None,
    ) -> torch.Tensor:
        """Final hidden states ``(B, T, d_model)`` for token ids ``idx`` ``(B, T)``; with ``targets``
        the LM loss instead (computed inside forward so sharded wrappers see the tied weight)."""
        hidden = self.hidden_states(idx, cache=cache, key_lengths=key_lengths)
        if targets is None:
            return hidden
        return self.lm_loss(hidden, targets, reduction=reduction)

    def hidden_states(self, idx: torch.Tensor, *, cache: KVCache | None = None, key_lengths=None) -> torch.Tensor:
        start = cache.length if cache is not None else 0
        time = idx.shape[1]
        if start + time > self.config.n_ctx:
            raise ValueError(f"sequence of {start + time} tokens exceeds the context of {self.config.n_ctx}")
        positions = torch.arange(start, start + time, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))
        for layer, block in enumerate(self.blocks):
            x = block(x, layer=layer, cache=cache, key_lengths=key_lengths)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits through the tied embedding."""
        return hidden @ self.tok_emb.weight.t()

    def lm_loss(self, hidden: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100, reduction: str = "mean"):
        """L1: cross-entropy of the next token, computed without materialising all logits on CUDA."""
        width = hidden.shape[-1]
        return ops.linear_cross_entropy(
            hidden.reshape(-1, width), self.tok_emb.weight, targets.reshape(-1),
            ignore_index=ignore_index, reduction=reduction,
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
