"""The ops interface: attention, residual+LayerNorm and cross-entropy, dispatched by device.

The model calls only these functions. On CUDA (with Triton importable) they run the fused
Triton kernels of :mod:`gpt1_kernels`; elsewhere the PyTorch references. ``GPT1_KERNELS``
forces a path: ``torch``, ``triton`` (needs a CUDA GPU, or ``TRITON_INTERPRET=1`` for tests)
or ``auto`` (the default). The path is resolved once per process, at the first op or
:func:`kernel_path` call, and logged once; :func:`reset_kernel_path` makes the next call
read the environment again. Attention with far fewer queries than keys (decoding with a KV
cache) always goes to PyTorch's SDPA.
"""

from __future__ import annotations

import enum
import logging
import os

import torch

from gpt1_kernels import reference, triton_available, triton_interpreting

from ..errors import Gpt1Error

_CHOICES = ("auto", "torch", "triton")
_log = logging.getLogger(__name__)


class KernelPath(enum.Enum):
    """Which implementation the ops run."""

    TORCH = "torch"  # the PyTorch references, for every tensor
    TRITON = "triton"  # Triton kernels for CUDA tensors, the references for the rest
    TRITON_INTERPRETER = "triton-interpreter"  # Triton for every tensor, CPU ones interpreted (tests)


_resolved: KernelPath | None = None


def kernel_choice() -> str:
    """The requested path from ``GPT1_KERNELS`` (``auto`` when unset); a bad value is a Gpt1Error."""
    raw = os.environ.get("GPT1_KERNELS", "auto")
    choice = raw.strip().lower() or "auto"
    if choice not in _CHOICES:
        raise Gpt1Error(f"GPT1_KERNELS={raw!r} is not a kernel path: set it to one of {', '.join(_CHOICES)}, "
                        "or unset it for auto")
    return choice


def resolve_kernel_path(choice: str, *, triton_ok: bool, cuda_ok: bool, interpreting: bool) -> KernelPath:
    """The path for a validated ``choice`` on a machine with the given capabilities."""
    if choice == "torch":
        return KernelPath.TORCH
    if choice == "auto":
        return KernelPath.TRITON if triton_ok and cuda_ok else KernelPath.TORCH
    if not triton_ok:
        raise Gpt1Error("GPT1_KERNELS=triton needs the triton package, which does not import here: "
                        "install it (Linux) or use GPT1_KERNELS=auto")
    if interpreting:
        return KernelPath.TRITON_INTERPRETER
    if cuda_ok:
        return KernelPath.TRITON
    raise Gpt1Error("GPT1_KERNELS=triton needs a CUDA GPU or TRITON_INTERPRET=1 (tests only); "
                    "none is set up here: use GPT1_KERNELS=auto or torch")


def kernel_path() -> KernelPath:
    """The process's kernel path, resolved from the environment on the first call."""
    global _resolved
    path = _resolved
    if path is None:
        path = resolve_kernel_path(kernel_choice(), triton_ok=triton_available(),
                                   cuda_ok=torch.cuda.is_available(), interpreting=triton_interpreting())
        _resolved = path
        _log.info("kernel path: %s", path.value)
    return path


def reset_kernel_path() -> None:
    """Forget the resolved path: the next op reads ``GPT1_KERNELS`` again (tests, benchmarks)."""
    global _resolved
    _resolved = None


def _triton_on(device_type: str) -> bool:
    path = kernel_path()
    return path is KernelPath.TRITON_INTERPRETER or (path is KernelPath.TRITON and device_type == "cuda")


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether ops on ``tensor`` go to the Triton kernels."""
    return _triton_on(tensor.device.type)


def describe_path(device: torch.device | str) -> str:
    """A one-line account of which kernels run on ``device``, for run logs."""
    if _triton_on(torch.device(device).type):
        mode = " (interpreter)" if triton_interpreting() else ""
        return f"triton{mode}: flash-attention, add+LayerNorm, linear+cross-entropy"
    return "torch: scaled_dot_product_attention, layer_norm, cross_entropy"


# Decoding shapes: the kernels' grid is (batch * heads, query blocks), so a handful of queries
# against a long cache makes one program per head walk every key: batch * heads programs,
# too few to fill a GPU. Such calls take the torch path (SDPA), so decoding is never slower
# than it.
DECODE_MAX_QUERIES = 16
DECODE_KEY_RATIO = 4


def attention_prefers_sdpa(tq: int, tk: int) -> bool:
    """True for decoding-shaped attention: fewer queries than keys, and few or far fewer."""
    return tq < tk and (tq <= DECODE_MAX_QUERIES or DECODE_KEY_RATIO * tq <= tk)


def _triton_or(tensor: torch.Tensor, module: str, name: str, fallback):
    """``gpt1_kernels.<module>.<name>`` when ops on ``tensor`` go to Triton, else ``fallback``."""
    if not use_triton(tensor):
        return fallback
    # Imported on the Triton path only, as they import Triton; an import statement (unlike
    # importlib) is something torch.compile traces without a graph break.
    from gpt1_kernels import attention, cross_entropy, layernorm

    return getattr({"attention": attention, "cross_entropy": cross_entropy, "layernorm": layernorm}[module], name)


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
    attend = reference.attention_sdpa
    if not attention_prefers_sdpa(q.shape[-2], k.shape[-2]):
        attend = _triton_or(q, "attention", "flash_attention", attend)
    return attend(q, k, v, causal=True, dropout_p=dropout_p, key_lengths=key_lengths, window=window)


def add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    return_sum: bool = False,
):
    """``LayerNorm(x + residual)``; with ``return_sum`` also returns ``x + residual``."""
    norm = _triton_or(x, "layernorm", "add_layer_norm", reference.add_layer_norm_reference)
    return norm(x, residual, weight, bias, eps=eps, return_sum=return_sum)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` (the tied LM head's loss)."""
    loss = _triton_or(hidden, "cross_entropy", "linear_cross_entropy", reference.linear_cross_entropy_reference)
    return loss(hidden, weight, targets, ignore_index=ignore_index, reduction=reduction)


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy on given logits (fine-tuning heads, evaluation)."""
    loss = _triton_or(logits, "cross_entropy", "cross_entropy", reference.cross_entropy_reference)
    return loss(logits, targets, ignore_index=ignore_index, reduction=reduction)
