"""AdamW with the paper's regularisation, and the learning-rate schedules."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; never biases or LayerNorm gains (the paper's modified L2)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
    fused = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused or None)


def warmup_cosine(step: int, *, max_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine annealing to 0 at ``total`` (pre-training)."""
    if warmup and step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return max_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step: int, *, max_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up then linear decay to 0 at ``total`` (fine-tuning)."""
    if warmup and step < warmup:
        return max_lr * (step + 1) / warmup
    return max_lr * max(0.0, (total - step) / max(1, total - warmup))
