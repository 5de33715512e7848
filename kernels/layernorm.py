"""Fused residual-add + LayerNorm (forward and backward) in Triton.

``add_layer_norm(x, residual, weight, bias)`` computes ``LayerNorm(x + residual)`` over the
last dimension, with the same dtype rules as
:func:`gpt1_kernels.reference.add_layer_norm_reference`: statistics in fp32, the normalised
output in ``x.dtype``, the optional returned sum in the promoted dtype of ``x`` and
``residual``. Under ``torch.autocast`` nothing is cast beyond that, exactly as in the reference
(LayerNorm runs in fp32 under autocast).

Forward: one program per row reads ``x`` and ``residual`` once, writes the output (and the sum
when asked) once, and saves the fp32 mean and reciprocal standard deviation of the row.
Backward: a fixed grid of programs each walks a contiguous band of rows, writes the input
gradient (shared by ``x`` and ``residual``) and keeps fp32 partial sums of the weight and bias
gradients in registers; the partials are reduced afterwards with a plain ``sum``, so the
result is deterministic run to run.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

from . import eager
from .host import INTERPRETING, as_dtype, cdiv, next_power_of_2, on_device

__all__ = ["add_layer_norm"]

# A row is held in registers as one block, so row width is bounded; wider rows would need a
# looped kernel. (How register use grows towards this bound has not been measured.)
MAX_FEATURES = 16384

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _centre(s, mean, mask, n_cols):
    """``s - mean(s)`` (0 off ``mask``), correcting for ``mean`` being rounded to fp32.

    With a large common offset (say 1e4 on unit-scale rows) the fp32 mean is off by up to half
    an ulp (~5e-4), which would shift every centred value by that much. ``s - mean`` is exact
    there, so its own mean recovers the rounding error. Forward and backward both call this
    with the same saved ``mean``, so they see identical centred values.
    """
    d = tl.where(mask, s - mean, 0.0)
    return tl.where(mask, d - tl.sum(d, axis=0) / n_cols, 0.0)


@triton.jit
def _add_ln_fwd_kernel(
    X, R, W, B, OUT, SUM, MEAN, RSTD,
    stride_x, stride_r, stride_out, stride_sum,
    n_cols, eps,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STORE_SUM: tl.constexpr,
    SUM_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < n_cols
    s = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        # Round the sum to its storage dtype so the statistics describe exactly the tensor
        # an unfused ``x + residual`` would produce (and the one returned with return_sum).
        s = (s + r).to(SUM_DTYPE).to(tl.float32)
        if STORE_SUM:
            tl.store(SUM + row * stride_sum + cols, s.to(SUM_DTYPE), mask=mask)
    mean = tl.sum(s, axis=0) / n_cols
    centred = _centre(s, mean, mask, n_cols)
    var = tl.sum(centred * centred, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    y = centred * rstd * w
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * stride_out + cols, y.to(OUT.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _add_ln_bwd_kernel(
    X, R, S, W, DOUT, DSUM, DS, DW_PARTIAL, DB_PARTIAL, MEAN, RSTD,
    stride_x, stride_r, stride_s, stride_dout, stride_dsum, stride_ds,
    n_rows, n_cols, rows_per_program,
    HAS_RESIDUAL: tl.constexpr,
    LOAD_SUM: tl.constexpr,
    HAS_DSUM: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SUM_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_C], dtype=tl.float32)
    # int64 bounds make the loop index int64, so row offsets cannot overflow.
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    for row in range(row_start, row_end):
        if LOAD_SUM:
            s = tl.load(S + row * stride_s + cols, mask=mask, other=0.0).to(tl.float32)
        else:
            s = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            if HAS_RESIDUAL:
                r = tl.load(R + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
                s = (s + r).to(SUM_DTYPE).to(tl.float32)
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        xhat = _centre(s, mean, mask, n_cols) * rstd
        dy = tl.load(DOUT + row * stride_dout + cols, mask=mask, other=0.0).to(tl.float32)
        g = dy * w
        c_xhat = tl.sum(g * xhat, axis=0) / n_cols
        c_mean = tl.sum(g, axis=0) / n_cols
        ds = (g - (xhat * c_xhat + c_mean)) * rstd
        if HAS_DSUM:
            ds += tl.load(DSUM + row * stride_dsum + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DS + row * stride_ds + cols, ds.to(DS.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw_acc, mask=mask)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid * n_cols + cols, db_acc, mask=mask)


def _launch_config(n_cols: int) -> tuple[int, int]:
    """``(BLOCK_C, num_warps)`` for rows of ``n_cols`` features."""
    if n_cols > MAX_FEATURES:
        raise ValueError(f"add_layer_norm supports at most {MAX_FEATURES} features, got {n_cols}")
    block = next_power_of_2(n_cols)
    if INTERPRETING:
        return block, 1
    return block, min(max(block // 256, 1), 16)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _backward_programs(n_rows: int, device: torch.device, block: int) -> int:
    """How many programs share the backward rows (and so how many partial sums to reduce)."""
    if device.type != "cuda":
        # Small and odd, so interpreter tests cover programs with uneven row bands.
        return max(1, min(n_rows, 3))
    per_sm = 4 if block <= 2048 else 2
    index = device.index if device.index is not None else torch.cuda.current_device()
    return max(1, min(n_rows, per_sm * _sm_count(index)))


def _sum_dtype(x: torch.Tensor, residual: Optional[torch.Tensor]) -> torch.dtype:
    if residual is None or residual.dtype == x.dtype:
        return x.dtype
    return torch.promote_types(x.dtype, residual.dtype)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """2-D view with unit stride on the feature dim (copies only if it must)."""
    t2 = t if t.dim() == 2 else t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


# ----------------------------------------------------------------------------- implementation


def _forward_impl(x, residual, weight, bias, eps, store_sum):
    """``(out, summed or empty, mean, rstd)`` for 2-D ``x`` (and ``residual``)."""
    n_rows, n_cols = x.shape
    sum_dtype = _sum_dtype(x, residual)
    store_sum = store_sum and residual is not None
    out = torch.empty_like(x)
    summed = torch.empty((n_rows, n_cols) if store_sum else (0,), device=x.device, dtype=sum_dtype)
    mean = torch.empty(n_rows, device=x.device, dtype=torch.float32)
    rstd = torch.empty(n_rows, device=x.device, dtype=torch.float32)
    if n_rows == 0:
        return out, summed, mean, rstd
    block, warps = _launch_config(n_cols)
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    with on_device(x):
        _add_ln_fwd_kernel[(n_rows,)](
            x, residual if residual is not None else x, weight, bias if bias is not None else weight,
            out, summed if store_sum else out, mean, rstd,
            x.stride(0), residual.stride(0) if residual is not None else 0, out.stride(0),
            summed.stride(0) if store_sum else 0,
            n_cols, eps,
            HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, STORE_SUM=store_sum,
            SUM_DTYPE=_TL_DTYPES[sum_dtype], BLOCK_C=block, num_warps=warps,
        )
    return out, summed, mean, rstd


def _backward_impl(dout, dsum, x, residual, summed, weight, has_bias, mean, rstd):
    """``(d(x + residual), dweight, dbias or empty)``; the first in the sum's dtype."""
    n_rows, n_cols = x.shape
    sum_dtype = _sum_dtype(x, residual)
    ds = torch.empty((n_rows, n_cols), device=x.device, dtype=sum_dtype)
    block, warps = _launch_config(n_cols)
    programs = _backward_programs(n_rows, x.device, block)
    # Every program writes its row of partial sums, so only a launch-free call needs zeros.
    partials = torch.empty if n_rows > 0 else torch.zeros
    dw_partial = partials((programs, n_cols), device=x.device, dtype=torch.float32)
    db_partial = partials((programs, n_cols) if has_bias else (0,), device=x.device, dtype=torch.float32)
    if n_rows > 0:
        dout = _rows(dout)
        load_sum = summed is not None and summed.numel() > 0
        has_dsum = dsum is not None and dsum.numel() > 0
        if has_dsum:
            dsum = _rows(dsum)
        with on_device(x):
            _add_ln_bwd_kernel[(programs,)](
                x, residual if residual is not None else x, summed if load_sum else x,
                weight.contiguous(), dout, dsum if has_dsum else dout, ds, dw_partial,
                db_partial if has_bias else dw_partial, mean, rstd,
                x.stride(0), residual.stride(0) if residual is not None else 0,
                summed.stride(0) if load_sum else 0, dout.stride(0),
                dsum.stride(0) if has_dsum else 0, ds.stride(0),
                n_rows, n_cols, cdiv(n_rows, programs),
                HAS_RESIDUAL=residual is not None, LOAD_SUM=load_sum, HAS_DSUM=has_dsum,
                HAS_BIAS=has_bias, SUM_DTYPE=_TL_DTYPES[sum_dtype], BLOCK_C=block, num_warps=warps,
            )
    dweight = as_dtype(dw_partial.sum(dim=0), weight.dtype)
    dbias = as_dtype(db_partial.sum(dim=0), weight.dtype) if has_bias else weight.new_empty((0,))
    return ds, dweight, dbias


# ----------------------------------------------------------------------------- the op: custom op, autograd.Function

_add_ln_fwd = eager.custom_op("add_layer_norm_fwd", _forward_impl, (
    "(Tensor x, Tensor? residual, Tensor weight, Tensor? bias, float eps, bool store_sum) "
    "-> (Tensor, Tensor, Tensor, Tensor)"))
_add_ln_bwd = eager.custom_op("add_layer_norm_bwd", _backward_impl, (
    "(Tensor dout, Tensor? dsum, Tensor x, Tensor? residual, Tensor? summed, Tensor weight, bool has_bias, "
    "Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor)"))


@_add_ln_fwd.register_fake
def _(x, residual, weight, bias, eps, store_sum):
    n_rows, n_cols = x.shape
    store_sum = store_sum and residual is not None
    summed = x.new_empty((n_rows, n_cols) if store_sum else (0,), dtype=_sum_dtype(x, residual))
    stats = x.new_empty((n_rows,), dtype=torch.float32)
    return torch.empty_like(x), summed, stats, stats.clone()


@_add_ln_bwd.register_fake
def _(dout, dsum, x, residual, summed, weight, has_bias, mean, rstd):
    ds = x.new_empty(x.shape, dtype=_sum_dtype(x, residual))
    return ds, torch.empty_like(weight), weight.new_empty(weight.shape if has_bias else (0,))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, _eps, store_sum = inputs
    _out, summed, mean, rstd = output
    stored = store_sum and residual is not None
    # With the sum stored, backward reads it instead of re-adding x and residual.
    ctx.save_for_backward(x, residual, summed if stored else None, weight, mean, rstd)
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _input_grads(ctx, dout, dsum, backward_impl):
    x, residual, summed, weight, mean, rstd = ctx.saved_tensors
    if dout is None:  # only the sum was used (the eager path does not zero-fill unused gradients)
        dout = torch.zeros(x.shape, device=x.device, dtype=x.dtype)
    ds, dweight, dbias = backward_impl(dout, dsum, x, residual, summed, weight, ctx.has_bias, mean, rstd)
    dx = as_dtype(ds, x.dtype)
    dres = as_dtype(ds, residual.dtype) if residual is not None else None
    dbias = as_dtype(dbias, ctx.bias_dtype) if ctx.has_bias else None
    return dx, dres, dweight, dbias, None, None


def _backward(ctx, dout, dsum, _dmean, _drstd):
    return _input_grads(ctx, dout, dsum, _add_ln_bwd)


def _eager_backward(ctx, dout, dsum, _dmean, _drstd):
    return _input_grads(ctx, dout, dsum, eager.backward_path(_add_ln_bwd, _backward_impl))


_add_ln_fwd.register_autograd(_backward, setup_context=_setup_context)
_AddLayerNorm = eager.autograd_function("AddLayerNorm", _forward_impl, _setup_context, _eager_backward, 2)


# ----------------------------------------------------------------------------- public API


def add_layer_norm(
    x: torch.Tensor,
    residual: Optional[torch.Tensor],
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    eps: float = 1e-5,
    return_sum: bool = False,
):
    """Fused ``LayerNorm(x + residual)`` over the last dim; ``(out, x + residual)`` with ``return_sum``.

    ``residual`` and ``bias`` may be ``None``. ``out`` has ``x.dtype``; the sum has the dtype
    of ``x + residual``. Differentiable, and traceable by ``torch.compile(fullgraph=True)``.
    """
    n_cols = x.shape[-1]
    if weight.shape != (n_cols,) or (bias is not None and bias.shape != (n_cols,)):
        raise ValueError(f"weight and bias must have shape ({n_cols},)")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} differs from x shape {tuple(x.shape)}")
    x2 = _rows(x)
    r2 = _rows(residual) if residual is not None else None
    store_sum = bool(return_sum) and residual is not None
    args = (x2, r2, weight, bias, float(eps), store_sum)
    out, summed, _mean, _rstd = eager.call(_add_ln_fwd, _AddLayerNorm, _forward_impl, args, (x2, r2, weight, bias))
    if x.dim() != 2:  # a view costs a few microseconds and an autograd node
        out = out.view(x.shape)
        summed = summed.view(x.shape) if store_sum else summed
    if not return_sum:
        return out
    return out, (summed if store_sum else x)
