"""The ops interface: attention, residual+LayerNorm and cross-entropy, dispatched by device.

The model calls only these functions. On CUDA (with Triton importable) they run the fused
Triton kernels of :mod:`gpt1_kernels`; elsewhere the PyTorch references. ``GPT1_KERNELS``
forces a path: ``torch``, ``triton`` (on a CPU that needs ``TRITON_INTERPRET=1``) or
``auto`` (the default).
"""

from __future__ import annotations

import os

import torch

from gpt1_kernels import reference, triton_available, triton_interpreting

_CHOICES = ("auto", "torch", "triton")


def kernel_choice() -> str:
    """The requested path from ``GPT1_KERNELS`` (``auto`` when unset)."""
    choice = os.environ.get("GPT1_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"GPT1_KERNELS must be one of {', '.join(_CHOICES)}, not {choice!r}")
    return choice


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether ops on ``tensor`` go to the Triton kernels."""
    choice = kernel_choice()
    if choice == "torch" or not triton_available():
        return False
    if choice == "triton":
        return tensor.is_cuda or triton_interpreting()
    return tensor.is_cuda


def describe_path(device: torch.device | str) -> str:
    """A one-line account of which kernels run on ``device``, for run logs."""
    probe = torch.empty(0, device=device)
    if use_triton(probe):
        mode = " (interpreter)" if not probe.is_cuda else ""
        return f"triton{mode}: flash-attention, add+LayerNorm, linear+cross-entropy"
    return "torch: scaled_dot_product_attention, layer_norm, cross_entropy"


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    dropout_p: float = 0.0,
    key_lengths: torch.Tensor | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Causal softmax attention over ``(B, H, T, D)`` tensors (see :mod:`gpt1_kernels.reference`)."""
    if use_triton(q):
        from gpt1_kernels.attention import flash_attention

        return flash_attention(q, k, v, causal=True, dropout_p=dropout_p, key_lengths=key_lengths, window=window)
    return reference.attention_sdpa(q, k, v, causal=True, dropout_p=dropout_p, key_lengths=key_lengths, window=window)


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    return_sum: bool = False,
):
    """``LayerNorm(x + residual)``; with ``return_sum`` also returns ``x + residual``."""
    if use_triton(x):
        from gpt1_kernels.layernorm import add_layer_norm as fused

        return fused(x, residual, weight, bias, eps=eps, return_sum=return_sum)
    return reference.add_layer_norm_reference(x, residual, weight, bias, eps=eps, return_sum=return_sum)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` (the tied LM head's loss)."""
    if use_triton(hidden):
        from gpt1_kernels.cross_entropy import linear_cross_entropy as fused

        return fused(hidden, weight, targets, ignore_index=ignore_index, reduction=reduction)
    return reference.linear_cross_entropy_reference(
        hidden, weight, targets, ignore_index=ignore_index, reduction=reduction
    )


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy on given logits (fine-tuning heads, evaluation)."""
    if use_triton(logits):
        from gpt1_kernels.cross_entropy import cross_entropy as fused

        return fused(logits, targets, ignore_index=ignore_index, reduction=reduction)
    return reference.cross_entropy_reference(logits, targets, ignore_index=ignore_index, reduction=reduction)
