"""Fused cross-entropy kernels in Triton.

* :func:`cross_entropy` — cross-entropy on given ``(N, V)`` logits. The forward kernel makes
  one pass over each row with an online log-sum-exp (so any vocabulary size works), writes
  the per-row loss and saves the row's max and log-sum-exp; the backward kernel rebuilds the
  softmax from them and writes ``(softmax - onehot) * dloss`` in the logits' dtype.
* :func:`linear_cross_entropy` — the tied LM head's loss, ``cross_entropy(hidden @ weight.T)``,
  without ever holding the ``(N, V)`` logits. Tokens go through in chunks: cuBLAS computes
  one chunk of logits, a Triton kernel turns that buffer into ``softmax - onehot`` in place
  (recording the loss on the way; fp16 values lifted by a power of two, see
  :func:`grad_lift`), and two more GEMMs fold it into fp32 hidden and weight gradients (the
  weight gradient accumulates in place in one fp32 buffer). The mean's ``1 / count`` is
  applied to those fp32 results, never to the low-precision buffer, where at tens of
  thousands of tokens it would flush fp16 values to zero. The gradients are thus produced
  by the forward and saved; backward only scales them by the incoming gradient.
  Memory is ``O(chunk x V)`` plus the gradients.

Both follow :func:`gpt1_kernels.reference.cross_entropy_reference`: losses in fp32, targets
equal to ``ignore_index`` contribute neither loss nor gradient, the mean is over the other
targets and is 0 when every target is ignored. Targets outside ``[0, V)`` (other than
``ignore_index``) are not checked on the device; they give a loss of ``logsumexp`` and no
one-hot term.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

from . import eager
from .host import INTERPRETING, as_dtype, cdiv, next_power_of_2, on_device
from .reference import check_reduction, reduce_losses

__all__ = ["cross_entropy", "default_chunk_size", "linear_cross_entropy"]



# ----------------------------------------------------------------------------- kernels


@triton.jit
def _row_logsumexp_and_target(row_ptr, n_cols, target, valid, BLOCK_V: tl.constexpr):
    """Online log-sum-exp of one row, as ``(max, log(sum(exp(x - max))))``, and the target logit.

    The two parts of the log-sum-exp stay separate: with large logits (a 1e4 offset) their
    fp32 sum would round off ~1e-3, while ``(max - target) + logsum`` keeps full precision,
    as torch's log-softmax does. The target logit is 0 where ``valid`` is false.
    """
    cols = tl.arange(0, BLOCK_V)
    run_max = tl.full([], float("-inf"), tl.float32)
    run_sum = tl.full([], 0.0, tl.float32)
    for start in range(0, n_cols, BLOCK_V):
        x = tl.load(row_ptr + start + cols, mask=start + cols < n_cols, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(run_max, tl.max(x, axis=0))
        # A block of -inf logits (masked vocabulary) would make inf - inf; shift by 0 instead.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        run_sum = run_sum * tl.exp2((run_max - shift) * 1.4426950408889634) + tl.sum(
            tl.exp2((x - shift) * 1.4426950408889634), axis=0
        )
        run_max = new_max
    in_range = valid & (target >= 0) & (target < n_cols)
    target_logit = tl.load(row_ptr + target, mask=in_range, other=0.0).to(tl.float32)
    return run_max, tl.log(run_sum), target_logit


@triton.jit
def _write_softmax_grad(src_row, dst_row, n_cols, row_max, logsum, target, coef, BLOCK_V: tl.constexpr):
    """``dst = (softmax(src) - onehot(target)) * coef``; ``src`` and ``dst`` may be the same row."""
    cols = tl.arange(0, BLOCK_V)
    for start in range(0, n_cols, BLOCK_V):
        idx = start + cols
        mask = idx < n_cols
        x = tl.load(src_row + idx, mask=mask, other=float("-inf")).to(tl.float32)
        p = tl.exp2(((x - row_max) - logsum) * 1.4426950408889634)
        g = tl.where(idx == target, p - 1.0, p) * coef
        tl.store(dst_row + idx, g.to(dst_row.dtype.element_ty), mask=mask)


@triton.jit
def _ce_fwd_kernel(
    LOGITS, TARGETS, LOSS, ROW_MAX, ROW_LOGSUM, stride_row, n_cols, ignore_index, BLOCK_V: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(TARGETS + row)
    valid = target != ignore_index
    row_max, logsum, target_logit = _row_logsumexp_and_target(
        LOGITS + row * stride_row, n_cols, target, valid, BLOCK_V
    )
    tl.store(LOSS + row, tl.where(valid, (row_max - target_logit) + logsum, 0.0))
    tl.store(ROW_MAX + row, row_max)
    tl.store(ROW_LOGSUM + row, logsum)


@triton.jit
def _ce_bwd_kernel(
    LOGITS, TARGETS, ROW_MAX, ROW_LOGSUM, DLOSS, DLOGITS,
    stride_row, stride_drow, stride_dloss, n_cols, ignore_index,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(TARGETS + row)
    valid = target != ignore_index
    coef = tl.where(valid, tl.load(DLOSS + row * stride_dloss).to(tl.float32), 0.0)
    _write_softmax_grad(
        LOGITS + row * stride_row, DLOGITS + row * stride_drow, n_cols,
        tl.load(ROW_MAX + row), tl.load(ROW_LOGSUM + row), target, coef, BLOCK_V,
    )


@triton.jit
def _logits_to_grad_kernel(
    LOGITS, TARGETS, LOSS, stride_row, n_cols, ignore_index, grad_lift,
    COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Loss of one row of a logits chunk, then the row overwritten by ``(softmax - onehot) *
    grad_lift`` (zeros for an ignored target); the caller divides the lift out, and applies the
    reduction's scale, in fp32."""
    row = tl.program_id(0).to(tl.int64)
    row_ptr = LOGITS + row * stride_row
    target = tl.load(TARGETS + row)
    valid = target != ignore_index
    row_max, logsum, target_logit = _row_logsumexp_and_target(row_ptr, n_cols, target, valid, BLOCK_V)
    tl.store(LOSS + row, tl.where(valid, (row_max - target_logit) + logsum, 0.0))
    if COMPUTE_GRAD:
        coef = tl.where(valid, grad_lift, 0.0)
        _write_softmax_grad(row_ptr, row_ptr, n_cols, row_max, logsum, target, coef, BLOCK_V)


# ----------------------------------------------------------------------------- helpers


def _block_v(n_cols: int) -> tuple[int, int]:
    """``(BLOCK_V, num_warps)`` for rows of ``n_cols`` logits."""
    if INTERPRETING:
        # Small blocks so interpreter tests cover several blocks and a masked tail.
        return min(64, next_power_of_2(n_cols)), 1
    block = min(4096, next_power_of_2(n_cols))
    return block, (8 if block >= 2048 else 4)


# ----------------------------------------------------------------------------- cross_entropy op


def _ce_forward_impl(logits, targets, ignore_index):
    """Per-row fp32 ``(loss, max, log-sum-exp minus max)`` of 2-D ``logits``; ignored rows have loss 0."""
    n_rows, n_cols = logits.shape
    losses = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
    row_max = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
    logsum = torch.empty(n_rows, device=logits.device, dtype=torch.float32)
    if n_rows > 0:
        block, warps = _block_v(n_cols)
        with on_device(logits):
            _ce_fwd_kernel[(n_rows,)](
                logits, targets.contiguous(), losses, row_max, logsum, logits.stride(0), n_cols, ignore_index,
                BLOCK_V=block, num_warps=warps,
            )
    return losses, row_max, logsum


def _ce_backward_impl(dlosses, logits, targets, row_max, logsum, ignore_index):
    """``d(sum_i dlosses[i] * loss_i)/d(logits)`` in the logits' dtype."""
    n_rows, n_cols = logits.shape
    dlogits = torch.empty_like(logits, memory_format=torch.contiguous_format)
    if n_rows > 0:
        block, warps = _block_v(n_cols)
        with on_device(logits):
            _ce_bwd_kernel[(n_rows,)](
                logits, targets.contiguous(), row_max, logsum, dlosses, dlogits,
                logits.stride(0), dlogits.stride(0), dlosses.stride(0), n_cols, ignore_index,
                BLOCK_V=block, num_warps=warps,
            )
    return dlogits


_ce_fwd = eager.custom_op("cross_entropy_fwd", _ce_forward_impl,
                          "(Tensor logits, Tensor targets, SymInt ignore_index) -> (Tensor, Tensor, Tensor)")
_ce_bwd = eager.custom_op("cross_entropy_bwd", _ce_backward_impl, (
    "(Tensor dlosses, Tensor logits, Tensor targets, Tensor row_max, Tensor logsum, SymInt ignore_index) -> Tensor"))


@_ce_fwd.register_fake
def _(logits, targets, ignore_index):
    stats = logits.new_empty((logits.shape[0],), dtype=torch.float32)
    return stats, stats.clone(), stats.clone()


@_ce_bwd.register_fake
def _(dlosses, logits, targets, row_max, logsum, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _ce_setup_context(ctx, inputs, output):
    logits, targets, ignore_index = inputs
    _losses, row_max, logsum = output
    ctx.save_for_backward(logits, targets, row_max, logsum)
    ctx.ignore_index = ignore_index


def _ce_input_grads(ctx, dlosses, backward_impl):
    logits, targets, row_max, logsum = ctx.saved_tensors
    if dlosses is None:
        return None, None, None
    dlogits = backward_impl(as_dtype(dlosses, torch.float32), logits, targets, row_max, logsum, ctx.ignore_index)
    return dlogits, None, None


def _ce_backward(ctx, dlosses, _dmax, _dlogsum):
    return _ce_input_grads(ctx, dlosses, _ce_bwd)


def _ce_eager_backward(ctx, dlosses, _dmax, _dlogsum):
    return _ce_input_grads(ctx, dlosses, eager.backward_path(_ce_bwd, _ce_backward_impl))


_ce_fwd.register_autograd(_ce_backward, setup_context=_ce_setup_context)
_CrossEntropy = eager.autograd_function("CrossEntropy", _ce_forward_impl, _ce_setup_context, _ce_eager_backward)


def cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Fused cross-entropy of ``logits`` ``(..., V)`` against integer ``targets`` ``(...)``.

    Returns an fp32 loss: a scalar for ``mean`` (over non-ignored targets, 0 if none) and
    ``sum``, or per-token losses shaped like ``targets`` for ``none``. Differentiable with
    respect to ``logits``; traceable by ``torch.compile(fullgraph=True)``.
    """
    check_reduction(reduction)
    n_cols = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits {tuple(logits.shape)}")
    logits2 = logits if logits.dim() == 2 else logits.reshape(-1, n_cols)
    if logits2.stride(-1) != 1:
        logits2 = logits2.contiguous()
    flat_targets = targets if targets.dim() == 1 else targets.reshape(-1)
    args = (logits2, flat_targets, int(ignore_index))
    losses, _max, _logsum = eager.call(_ce_fwd, _CrossEntropy, _ce_forward_impl, args, (logits2, flat_targets))
    if reduction == "none" and targets.dim() != 1:
        losses = losses.view(targets.shape)
    return reduce_losses(losses, flat_targets, ignore_index, reduction)


# ----------------------------------------------------------------------------- linear_cross_entropy op

# Bytes of logits one chunk may hold.
_CHUNK_BYTES_CUDA = 256 * 1024 * 1024
_CHUNK_BYTES_OTHER = 256 * 1024


def default_chunk_size(
    n_rows: int, vocab: int, dtype: torch.dtype, device: torch.device, budget_bytes: Optional[int] = None
) -> int:
    """Tokens per chunk: as many as keep one ``(chunk, vocab)`` logits buffer within
    ``budget_bytes`` (default 256 MiB on CUDA, 256 KiB elsewhere), split into equal chunks."""
    row_bytes = vocab * dtype.itemsize
    if budget_bytes is None:
        budget_bytes = _CHUNK_BYTES_CUDA if device.type == "cuda" else _CHUNK_BYTES_OTHER
    rows = max(1, int(budget_bytes) // row_bytes)
    if rows >= 256:
        rows -= rows % 128  # GEMM-friendly
    rows = min(rows, max(n_rows, 1))
    # Equal chunks rather than full ones plus a small remainder.
    n_chunks = cdiv(max(n_rows, 1), rows)
    return cdiv(max(n_rows, 1), n_chunks)


# Which fp32-output GEMMs work for fp16/bf16 inputs on this torch (CUDA only; probed once).
_GEMM_SUPPORT: dict = {}


def _fp32_addmm_in_place_works(device: torch.device) -> bool:
    """Whether ``addmm(acc, a, b, out_dtype=float32, out=acc)`` accumulates a low-precision
    product into an fp32 ``acc`` correctly here: torch versions differ, so it is checked once
    on a small case (one synchronisation per process) before being trusted."""
    key = ("addmm", str(device))
    if key not in _GEMM_SUPPORT:
        ok = False
        if hasattr(torch.ops.aten.addmm, "dtype_out"):
            try:
                gen = torch.Generator(device="cpu").manual_seed(0)
                a = torch.randn(24, 16, generator=gen).to(device=device, dtype=torch.bfloat16)
                b = torch.randn(16, 8, generator=gen).to(device=device, dtype=torch.bfloat16)
                acc = torch.randn(24, 8, generator=gen).to(device)
                want = acc + a.float() @ b.float()
                got = torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
                ok = got.data_ptr() == acc.data_ptr() and bool(torch.allclose(acc, want, rtol=1e-2, atol=1e-2))
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _GEMM_SUPPORT[key] = ok
    return _GEMM_SUPPORT[key]


def _mm_fp32_out_works() -> bool:
    return _GEMM_SUPPORT.setdefault("mm", hasattr(torch.ops.aten.mm, "dtype"))


def _accumulate_weight_grad(acc: torch.Tensor, dlogits: torch.Tensor, h: torch.Tensor) -> None:
    """``acc (fp32) += dlogits.T @ h``, in place where torch allows it (no V x C temporary)."""
    if dlogits.dtype == torch.float32:
        acc.addmm_(dlogits.t(), h)
        return
    if dlogits.is_cuda:
        if _fp32_addmm_in_place_works(acc.device):
            torch.addmm(acc, dlogits.t(), h, out_dtype=torch.float32, out=acc)
            return
        if _mm_fp32_out_works():
            try:
                acc += torch.mm(dlogits.t(), h, out_dtype=torch.float32)
                return
            except (RuntimeError, TypeError):
                _GEMM_SUPPORT["mm"] = False
    # fp32 arithmetic: a low-precision output could overflow on the lifted gradients.
    acc.addmm_(dlogits.t().float(), h.float())


def _hidden_grad_into(out: torch.Tensor, dlogits: torch.Tensor, w: torch.Tensor) -> None:
    """``out (fp32 rows) = dlogits @ w``, never through a low-precision output."""
    if dlogits.dtype == torch.float32:
        torch.mm(dlogits, w, out=out)
        return
    if dlogits.is_cuda and _mm_fp32_out_works():
        try:
            torch.mm(dlogits, w, out_dtype=torch.float32, out=out)
            return
        except (RuntimeError, TypeError):
            _GEMM_SUPPORT["mm"] = False
    torch.mm(dlogits.float(), w.float(), out=out)


def _autocast_off(device_type: str):
    """Autocast disabled for the block (entering a no-op autocast context costs microseconds)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def grad_lift(compute_dtype: torch.dtype) -> float:
    """Power of two the chunk gradients are multiplied by in the logits buffer.

    ``softmax - onehot`` lies in [-1, 1], and small probabilities (1e-6 with a large vocabulary)
    are fp16 subnormals with few significant bits; 2**14 lifts them into fp16's normal range
    while the largest value stays far below 65504. Every GEMM reading the buffer writes fp32,
    and the lift is divided out exactly there. bf16 has fp32's range and needs none."""
    return 2.0**14 if compute_dtype == torch.float16 else 1.0


def _lce_forward_impl(hidden, weight, targets, ignore_index, reduction, chunk_size, compute_dtype,
                      want_grad_hidden, want_grad_weight):
    """``(loss, dloss/dhidden or empty, dloss/dweight or empty)`` for 2-D ``hidden``; the
    gradients in fp32."""
    n_rows, _ = hidden.shape
    vocab = weight.shape[0]
    device = hidden.device
    losses = torch.empty(n_rows, device=device, dtype=torch.float32)
    grad_hidden = torch.empty(hidden.shape if want_grad_hidden else (0,), device=device, dtype=torch.float32)
    grad_weight = torch.zeros(weight.shape if want_grad_weight else (0,), device=device, dtype=torch.float32)
    compute_grad = want_grad_hidden or want_grad_weight
    lift = grad_lift(compute_dtype)
    block, warps = _block_v(vocab)
    # The dtype of each matmul is fixed here, whatever autocast state the caller is in.
    with _autocast_off(device.type), on_device(hidden):
        h_all = as_dtype(hidden, compute_dtype)
        w = as_dtype(weight, compute_dtype)
        targets = targets.contiguous()
        buffer = torch.empty((min(chunk_size, n_rows), vocab), device=device, dtype=compute_dtype)
        for start in range(0, n_rows, chunk_size):
            stop = min(start + chunk_size, n_rows)
            h = h_all[start:stop]
            logits = buffer[: stop - start]
            torch.mm(h, w.t(), out=logits)
            _logits_to_grad_kernel[(stop - start,)](
                logits, targets[start:stop], losses[start:stop], logits.stride(0), vocab, ignore_index, lift,
                COMPUTE_GRAD=compute_grad, BLOCK_V=block, num_warps=warps,
            )
            # ``logits`` now holds (softmax - onehot) * lift for this chunk.
            if want_grad_hidden:
                _hidden_grad_into(grad_hidden[start:stop], logits, w)
            if want_grad_weight:
                _accumulate_weight_grad(grad_weight, logits, h)
        loss = losses.sum()
        grad_scale = 1.0 / lift if lift != 1.0 else None
        if reduction == "mean":
            # A device tensor (no synchronisation), applied in fp32 after the GEMMs.
            scale = (targets != ignore_index).sum().clamp(min=1).to(torch.float32).reciprocal()  # = 1.0 / count
            loss = loss * scale
            grad_scale = scale / lift if compute_grad else None
        if compute_grad and grad_scale is not None:
            grad_hidden.mul_(grad_scale)
            grad_weight.mul_(grad_scale)
    return loss, grad_hidden, grad_weight


_lce_fwd = eager.custom_op("linear_cross_entropy_fwd", _lce_forward_impl, (
    "(Tensor hidden, Tensor weight, Tensor targets, SymInt ignore_index, str reduction, SymInt chunk_size, "
    "ScalarType compute_dtype, bool want_grad_hidden, bool want_grad_weight) -> (Tensor, Tensor, Tensor)"))


@_lce_fwd.register_fake
def _(hidden, weight, targets, ignore_index, reduction, chunk_size, compute_dtype, want_grad_hidden, want_grad_weight):
    loss = hidden.new_empty((), dtype=torch.float32)
    grad_hidden = hidden.new_empty(hidden.shape if want_grad_hidden else (0,), dtype=torch.float32)
    grad_weight = weight.new_empty(weight.shape if want_grad_weight else (0,), dtype=torch.float32)
    return loss, grad_hidden, grad_weight


def _lce_setup_context(ctx, inputs, output):
    _loss, grad_hidden, grad_weight = output
    ctx.want = (inputs[7], inputs[8])
    ctx.dtypes = (inputs[0].dtype, inputs[1].dtype)
    ctx.save_for_backward(grad_hidden, grad_weight)


def _known_one(dloss: torch.Tensor) -> bool:
    """True when ``dloss`` is 1 and reading it costs nothing: a real (not traced) CPU scalar.
    A CUDA value is never read, as that would synchronise with the device."""
    return type(dloss) is torch.Tensor and dloss.device.type == "cpu" and dloss.numel() == 1 and dloss.item() == 1.0


def _times_upstream(grad: torch.Tensor, dloss: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grad * dloss`` in ``dtype``, one pass with fp32 arithmetic (none when dloss is known to be 1)."""
    if _known_one(dloss):
        return grad.to(dtype)
    return torch.mul(grad, dloss.to(grad.dtype), out=torch.empty_like(grad, dtype=dtype))


def _lce_backward(ctx, dloss, _dgh, _dgw):
    grad_hidden, grad_weight = ctx.saved_tensors
    want_hidden, want_weight = ctx.want
    hidden_dtype, weight_dtype = ctx.dtypes
    if dloss is None:
        return (None,) * 9
    gh = _times_upstream(grad_hidden, dloss, hidden_dtype) if want_hidden else None
    gw = _times_upstream(grad_weight, dloss, weight_dtype) if want_weight else None
    return gh, gw, None, None, None, None, None, None, None


_lce_fwd.register_autograd(_lce_backward, setup_context=_lce_setup_context)
_LinearCrossEntropy = eager.autograd_function("LinearCrossEntropy", _lce_forward_impl, _lce_setup_context,
                                              _lce_backward)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T`` against ``targets`` without materialising all logits.

    ``hidden`` is ``(..., C)``, ``weight`` the tied ``(V, C)`` embedding, ``targets`` the
    matching ``(...)`` integers. Returns the fp32 ``mean`` (over non-ignored targets, 0 if
    none) or ``sum``; ``none`` is not supported. ``chunk_size`` tokens are processed at a
    time (default: see :func:`default_chunk_size`). Under autocast the matmuls run in the
    autocast dtype and the loss in fp32. Gradients are computed in the forward pass.
    """
    check_reduction(reduction, ("mean", "sum"))
    n_cols = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != n_cols:
        raise ValueError(f"weight must be (vocab, {n_cols}), got {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match hidden {tuple(hidden.shape)}")
    h2 = hidden if hidden.dim() == 2 else hidden.reshape(-1, n_cols)
    flat_targets = targets if targets.dim() == 1 else targets.reshape(-1)
    device_type = "cuda" if hidden.is_cuda else hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    if chunk_size is None:
        chunk_size = default_chunk_size(h2.shape[0], weight.shape[0], compute_dtype, hidden.device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    grad_on = torch.is_grad_enabled()
    args = (h2, weight, flat_targets, int(ignore_index), reduction, int(chunk_size), compute_dtype,
            grad_on and hidden.requires_grad, grad_on and weight.requires_grad)
    loss, _gh, _gw = eager.call(_lce_fwd, _LinearCrossEntropy, _lce_forward_impl, args, (h2, weight))
    return loss
