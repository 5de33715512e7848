"""PyTorch references for the fused kernels.

These are the ground truth the Triton kernels are tested against (values and gradients),
and the path that runs wherever Triton does not (CPU, or ``GPT1_KERNELS=torch``).
They favour clarity over speed, except :func:`attention_sdpa`, the fast torch path.

Conventions shared with the kernels
-----------------------------------
* Attention tensors are ``(batch, heads, time, head_dim)``. Keys may be longer than queries
  (a KV cache): query ``i`` sits at absolute position ``i + Tk - Tq`` and, when causal, sees
  keys ``0 .. i + Tk - Tq``.
* ``key_lengths`` (``(batch,)`` integers) marks keys at positions ``>= key_lengths[b]`` as
  padding. ``window`` (GPT-3 style banded layers) lets a query see only the ``window`` most
  recent keys, itself included.
* A query row that can see no key at all returns zeros (not NaN).
* Cross-entropy ignores targets equal to ``ignore_index``; the mean is over the others and
  is 0 (with zero gradients) when every target is ignored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_mask(
    tq: int,
    tk: int,
    *,
    causal: bool = True,
    key_lengths: torch.Tensor | None = None,
    window: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean ``(batch or 1, 1, tq, tk)`` mask, True where a query may attend a key."""
    q_pos = torch.arange(tq, device=device).unsqueeze(1) + (tk - tq)
    k_pos = torch.arange(tk, device=device).unsqueeze(0)
    allowed = torch.ones(tq, tk, dtype=torch.bool, device=device)
    if causal:
        allowed &= k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    allowed = allowed.view(1, 1, tq, tk)
    if key_lengths is not None:
        valid = k_pos.view(1, 1, 1, tk) < key_lengths.to(device).view(-1, 1, 1, 1)
        allowed = allowed & valid
    return allowed


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_lengths: torch.Tensor | None = None,
    window: int | None = None,
    dropout_p: float = 0.0,
    keep_mask: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Explicit softmax attention in fp32, optionally with a given dropout keep-mask.

    ``keep_mask`` (``(B, H, Tq, Tk)`` bool) applies dropout deterministically so a kernel's
    own mask can be checked; without it ``dropout_p`` draws one from torch's RNG.
    """
    tq, tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    allowed = attention_mask(tq, tk, causal=causal, key_lengths=key_lengths, window=window, device=q.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # rows that see no key
    if keep_mask is None and dropout_p > 0.0:
        keep_mask = torch.rand_like(probs) >= dropout_p
    if keep_mask is not None:
        probs = probs * keep_mask / (1.0 - dropout_p)
    return (probs @ v.float()).to(q.dtype)


def attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    key_lengths: torch.Tensor | None = None,
    window: int | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """The fast torch path: ``scaled_dot_product_attention`` with the same conventions."""
    tq, tk = q.shape[-2], k.shape[-2]
    if key_lengths is None and window is None and (tq == tk or not causal or tq == 1):
        # tq == 1 with a cache: the single newest query sees every key.
        is_causal = causal and tq == tk and tq > 1
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    allowed = attention_mask(tq, tk, causal=causal, key_lengths=key_lengths, window=window, device=q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p, scale=scale)
    # SDPA leaves NaN where a row sees no key; the convention is zeros.
    if key_lengths is not None:
        out = torch.nan_to_num(out, nan=0.0)
    return out


def add_layer_norm_reference(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    return_sum: bool = False,
):
    """``LayerNorm(x + residual)`` over the last dim; with ``return_sum`` also ``x + residual``.

    GPT-1's post-LN block needs only the normalised output; a pre-LN (GPT-2) block carries
    the sum forward as its residual stream.
    """
    summed = x if residual is None else x + residual
    out = F.layer_norm(summed.float(), (summed.shape[-1],), weight.float(), None if bias is None else bias.float(), eps)
    out = out.to(x.dtype)
    return (out, summed) if return_sum else out


REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> None:
    """A ValueError unless ``reduction`` is one of ``allowed``."""
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(allowed)}, not {reduction!r}")


def reduce_losses(losses: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    """Per-target losses as ``reduction`` asks: as they are (``none``), their ``sum``, or their
    ``mean`` over the targets other than ``ignore_index`` (0 when there are none)."""
    if reduction == "none":
        return losses
    total = losses.sum()
    if reduction == "sum":
        return total
    return total / (targets != ignore_index).sum().clamp(min=1)


def cross_entropy_reference(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy in fp32; mean over non-ignored targets, 0 when all are ignored."""
    check_reduction(reduction)
    losses = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="none")
    return reduce_losses(losses, targets, ignore_index, reduction)


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` (the tied LM head) with the full logits in memory."""
    logits = hidden @ weight.t()
    return cross_entropy_reference(logits, targets, ignore_index=ignore_index, reduction=reduction)
