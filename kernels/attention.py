"""Causal flash-attention in Triton: forward, backward and in-kernel attention dropout.

Conventions (shapes ``(B, H, T, D)``, bottom-right alignment of queries against a longer key
sequence, ``key_lengths`` padding, ``window`` bands, zero rows) are those of
:func:`gpt1_kernels.reference.attention_reference`.

The forward pass keeps only the output and the per-row log-sum-exp (fp32, in log2 units of
the scaled scores, as the kernels use ``exp2``); the backward pass recomputes the
probabilities tile by tile: one kernel per key block for dK/dV (each program owns its rows,
so no atomics and a bit-identical result on every run) and one per query block for dQ.
Tiles that the causal mask, the window band or the key padding hide completely are never
visited; only tiles that straddle a boundary pay for element masks.

Dropout regenerates its keep-mask from ``(seed, batch*head, query, key)`` with Philox
(``tl.rand``) wherever it is needed, so nothing of size ``T x T`` is ever stored.
:func:`attention_keep_mask` materialises the same mask for tests.
"""

import math
import os
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .availability import triton_interpreting

__all__ = ["flash_attention", "attention_keep_mask"]

_LOG2E = 1.4426950408889634
_MAX_HEAD_DIM = 256

# Block sizes used under TRITON_INTERPRET=1, where autotuning would take minutes. They are
# deliberately small and unequal so that short test sequences still cross several tiles.
INTERPRET_BLOCKS = {
    "fwd": {"BLOCK_M": 16, "BLOCK_N": 32},
    "dkdv": {"BLOCK_M": 32, "BLOCK_N": 16},
    "dq": {"BLOCK_M": 16, "BLOCK_N": 32},
    "delta": {"BLOCK_M": 32},
    "mask": {"BLOCK_M": 32, "BLOCK_N": 32},
}


# --------------------------------------------------------------------------------------------
# Shared device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _keep(seed, bh, rows, cols, Tk, dropout_p):
    """Dropout keep-mask for query indices ``rows`` and key indices ``cols`` (broadcast)."""
    # The (batch, head) index goes in the high half of Philox's 64-bit key and the in-head
    # element index in the 32-bit counter, so streams never overlap across heads and the
    # counter only has to cover Tq * Tk < 2**32 elements.
    seed_bh = bh.to(tl.int64) * 4294967296 + seed
    offs = rows.to(tl.uint32) * Tk + cols.to(tl.uint32)
    return tl.rand(seed_bh, offs) >= dropout_p


@triton.jit
def _query_block_key_range(first, last, kv_len, window, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                           HAS_WINDOW: tl.constexpr):
    """Key tiles for query positions ``first..last``: ``[lo, mid_lo)`` and ``[mid_hi, hi)`` need
    element masks, every key in ``[mid_lo, mid_hi)`` is visible to every query."""
    zero = kv_len * 0
    hi = kv_len
    full_hi = kv_len
    if CAUSAL:
        hi = tl.minimum(hi, last + 1)
        full_hi = tl.minimum(full_hi, first + 1)
    hi = tl.maximum(hi, zero)
    # Operands of // are kept non-negative: GPU division truncates, the interpreter floors.
    full_hi = tl.maximum(full_hi, zero) // BLOCK_N * BLOCK_N
    lo = zero
    full_lo = zero
    if HAS_WINDOW:
        lo = tl.maximum(first - window + 1, zero) // BLOCK_N * BLOCK_N
        full_lo = (tl.maximum(last - window + 1, zero) + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), hi)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _visible(q_pos, k_pos, kv_len, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    ok = k_pos < kv_len
    if CAUSAL:
        ok = ok & (k_pos <= q_pos)
    if HAS_WINDOW:
        ok = ok & (k_pos > q_pos - window)
    return ok


@triton.jit
def _load_key_length(KEYLEN, b, Tk, HAS_KEYLEN: tl.constexpr):
    kv_len = Tk + 0
    if HAS_KEYLEN:
        kv_len = tl.maximum(tl.minimum(tl.load(KEYLEN + b).to(tl.int32), Tk), 0)
    return kv_len


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, K_head, V_head, stride_kt, stride_vt, start, stop,
               offs_m, offs_d, d_ok, q_pos, kv_len, Tk, window, seed, bh, dropout_p, qk_scale,
               BLOCK_N: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ld_mask = (offs_n < kv_len)[:, None] & d_ok[None, :]
        k = tl.load(K_head + offs_n[:, None] * stride_kt + offs_d[None, :], mask=ld_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASK:
            ok = _visible(q_pos[:, None], offs_n[None, :], kv_len, window, CAUSAL, HAS_WINDOW)
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row that has seen no key yet keeps m = -inf; shift by 0 there so exp2 gives 0, not NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_ref[:, None])
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            # The normaliser l uses the undropped probabilities; only the value sum is thinned.
            p = tl.where(_keep(seed, bh, offs_m[:, None], offs_n[None, :], Tk, dropout_p), p, 0.0)
        v = tl.load(V_head + offs_n[:, None] * stride_vt + offs_d[None, :], mask=ld_mask, other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["Tq", "Tk", "window", "seed"])
def _attn_fwd(Q, K, V, O, LSE, KEYLEN,
              sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, so_b, so_h, so_t,
              H, Tq, Tk, window, seed, qk_scale, dropout_p,
              TQ_BUCKET, TK_BUCKET,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
              HAS_KEYLEN: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    Q_head = Q + b64 * sq_b + h64 * sq_h
    K_head = K + b64 * sk_b + h64 * sk_h
    V_head = V + b64 * sv_b + h64 * sv_h
    O_head = O + b64 * so_b + h64 * so_h

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < Tq
    q = tl.load(Q_head + offs_m[:, None] * sq_t + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    shift = Tk - Tq
    q_pos = offs_m + shift
    kv_len = _load_key_length(KEYLEN, b, Tk, HAS_KEYLEN)
    first = pid_m * BLOCK_M + shift
    last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, Tq) - 1 + shift
    lo, mid_lo, mid_hi, hi = _query_block_key_range(first, last, kv_len, window, BLOCK_N, CAUSAL, HAS_WINDOW)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_head, V_head, sk_t, sv_t, lo, mid_lo, offs_m, offs_d, d_ok,
                               q_pos, kv_len, Tk, window, seed, bh, dropout_p, qk_scale,
                               BLOCK_N, True, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_head, V_head, sk_t, sv_t, mid_lo, mid_hi, offs_m, offs_d, d_ok,
                               q_pos, kv_len, Tk, window, seed, bh, dropout_p, qk_scale,
                               BLOCK_N, False, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_head, V_head, sk_t, sv_t, mid_hi, hi, offs_m, offs_d, d_ok,
                               q_pos, kv_len, Tk, window, seed, bh, dropout_p, qk_scale,
                               BLOCK_N, True, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)

    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    if DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    # Kept in log2 units of the scaled scores, the backward's own units, so no conversion
    # rounds it; +inf for rows that see no key makes the backward's exp2(s - lse) exactly 0.
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
    tl.store(O_head + offs_m[:, None] * so_t + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh.to(tl.int64) * Tq + offs_m, lse, mask=row_ok)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["Tq"])
def _attn_bwd_delta(O, DO, DELTA, so_b, so_h, so_t, sdo_b, sdo_h, sdo_t, H, Tq,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta = rowsum(dO * O), the softmax-Jacobian correction of every query row."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < Tq)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + b * so_b + h * so_h + offs_m[:, None] * so_t + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + offs_m[:, None] * sdo_t + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, sq_t, sdo_t, start, stop,
                offs_n, offs_d, d_ok, shift, kv_len, Tq, Tk, window, seed, bh, dropout_p, qk_scale,
                BLOCK_M: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr):
    # Works on transposed tiles (keys x queries) so that dK and dV come out of plain dots.
    for start_m in range(start, stop, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Tq
        ld_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q_head + offs_m[:, None] * sq_t + offs_d[None, :], mask=ld_mask, other=0.0)
        lse2 = tl.load(LSE_row + offs_m, mask=row_ok, other=float("inf"))
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale
        if MASK:
            ok = _visible(offs_m[None, :] + shift, offs_n[:, None], kv_len, window, CAUSAL, HAS_WINDOW)
            s_t = tl.where(ok, s_t, float("-inf"))
        p_t = tl.math.exp2(s_t - lse2[None, :])
        do = tl.load(DO_head + offs_m[:, None] * sdo_t + offs_d[None, :], mask=ld_mask, other=0.0)
        delta = tl.load(DELTA_row + offs_m, mask=row_ok, other=0.0)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[None, :], offs_n[:, None], Tk, dropout_p)
            pd_t = tl.where(keep, p_t, 0.0)
            dp_t = tl.where(keep, dp_t * (1.0 / (1.0 - dropout_p)), 0.0)
        else:
            pd_t = p_t
        dv = tl.dot(pd_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PREC)
    return dk, dv


@triton.jit(do_not_specialize=["Tq", "Tk", "window", "seed"])
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, KEYLEN,
                   sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sdo_b, sdo_h, sdo_t,
                   sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t,
                   H, Tq, Tk, window, seed, sm_scale, qk_scale, dropout_p,
                   TQ_BUCKET, TK_BUCKET,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                   HAS_KEYLEN: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    Q_head = Q + b64 * sq_b + h64 * sq_h
    DO_head = DO + b64 * sdo_b + h64 * sdo_h
    LSE_row = LSE + bh.to(tl.int64) * Tq
    DELTA_row = DELTA + bh.to(tl.int64) * Tq

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    shift = Tk - Tq
    kv_len = _load_key_length(KEYLEN, b, Tk, HAS_KEYLEN)
    # Padded keys are never read (they may hold garbage); their dK and dV come out as zeros.
    ld_mask = (offs_n < kv_len)[:, None] & d_ok[None, :]
    k = tl.load(K + b64 * sk_b + h64 * sk_h + offs_n[:, None] * sk_t + offs_d[None, :], mask=ld_mask, other=0.0)
    v = tl.load(V + b64 * sv_b + h64 * sv_h + offs_n[:, None] * sv_t + offs_d[None, :], mask=ld_mask, other=0.0)
    kv_mask = (offs_n < Tk)[:, None] & d_ok[None, :]
    zero = kv_len * 0
    n_first = pid_n * BLOCK_N
    n_last = tl.minimum(n_first + BLOCK_N, kv_len) - 1  # last unpadded key of this block
    # Query rows that can see at least one key of the block.
    lo = zero
    if CAUSAL:
        lo = tl.maximum(n_first - shift, zero) // BLOCK_M * BLOCK_M
    hi = Tq + zero
    if HAS_WINDOW:
        hi = tl.minimum(hi, tl.maximum(n_last + window - shift, zero))
    hi = tl.where(n_last < n_first, zero, hi)
    # Query tiles that see every key of the block.
    full_lo = lo
    if CAUSAL:
        full_lo = (tl.maximum(n_first + BLOCK_N - 1 - shift, zero) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    full_lo = tl.where(n_first + BLOCK_N > kv_len, hi, full_lo)
    full_hi = hi
    if HAS_WINDOW:
        full_hi = tl.maximum(n_first + window - shift, zero) // BLOCK_M * BLOCK_M
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), hi)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, sq_t, sdo_t, lo, mid_lo,
                         offs_n, offs_d, d_ok, shift, kv_len, Tq, Tk, window, seed, bh, dropout_p, qk_scale,
                         BLOCK_M, True, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, sq_t, sdo_t, mid_lo, mid_hi,
                         offs_n, offs_d, d_ok, shift, kv_len, Tq, Tk, window, seed, bh, dropout_p, qk_scale,
                         BLOCK_M, False, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, sq_t, sdo_t, mid_hi, hi,
                         offs_n, offs_d, d_ok, shift, kv_len, Tq, Tk, window, seed, bh, dropout_p, qk_scale,
                         BLOCK_M, True, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dk = dk * sm_scale
    if DROPOUT:
        dv = dv * (1.0 / (1.0 - dropout_p))
    tl.store(DK + b64 * sdk_b + h64 * sdk_h + offs_n[:, None] * sdk_t + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=kv_mask)
    tl.store(DV + b64 * sdv_b + h64 * sdv_h + offs_n[:, None] * sdv_t + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=kv_mask)


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, K_head, V_head, stride_kt, stride_vt, start, stop,
              offs_m, offs_d, d_ok, q_pos, kv_len, Tk, window, seed, bh, dropout_p, qk_scale,
              BLOCK_N: tl.constexpr, MASK: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
              DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ld_mask = (offs_n < kv_len)[:, None] & d_ok[None, :]
        k = tl.load(K_head + offs_n[:, None] * stride_kt + offs_d[None, :], mask=ld_mask, other=0.0)
        v = tl.load(V_head + offs_n[:, None] * stride_vt + offs_d[None, :], mask=ld_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASK:
            ok = _visible(q_pos[:, None], offs_n[None, :], kv_len, window, CAUSAL, HAS_WINDOW)
            s = tl.where(ok, s, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        if DROPOUT:
            keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], Tk, dropout_p)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@triton.jit(do_not_specialize=["Tq", "Tk", "window", "seed"])
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, KEYLEN,
                 sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sdo_b, sdo_h, sdo_t,
                 sdq_b, sdq_h, sdq_t,
                 H, Tq, Tk, window, seed, sm_scale, qk_scale, dropout_p,
                 TQ_BUCKET, TK_BUCKET,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 HAS_KEYLEN: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    K_head = K + b64 * sk_b + h64 * sk_h
    V_head = V + b64 * sv_b + h64 * sv_h

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < Tq
    ld_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + b64 * sq_b + h64 * sq_h + offs_m[:, None] * sq_t + offs_d[None, :], mask=ld_mask, other=0.0)
    do = tl.load(DO + b64 * sdo_b + h64 * sdo_h + offs_m[:, None] * sdo_t + offs_d[None, :], mask=ld_mask,
                 other=0.0)
    lse2 = tl.load(LSE + bh.to(tl.int64) * Tq + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * Tq + offs_m, mask=row_ok, other=0.0)

    shift = Tk - Tq
    q_pos = offs_m + shift
    kv_len = _load_key_length(KEYLEN, b, Tk, HAS_KEYLEN)
    first = pid_m * BLOCK_M + shift
    last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, Tq) - 1 + shift
    lo, mid_lo, mid_hi, hi = _query_block_key_range(first, last, kv_len, window, BLOCK_N, CAUSAL, HAS_WINDOW)

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _dq_tiles(dq, q, do, lse2, delta, K_head, V_head, sk_t, sv_t, lo, mid_lo, offs_m, offs_d, d_ok, q_pos,
                   kv_len, Tk, window, seed, bh, dropout_p, qk_scale,
                   BLOCK_N, True, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dq = _dq_tiles(dq, q, do, lse2, delta, K_head, V_head, sk_t, sv_t, mid_lo, mid_hi, offs_m, offs_d, d_ok, q_pos,
                   kv_len, Tk, window, seed, bh, dropout_p, qk_scale,
                   BLOCK_N, False, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dq = _dq_tiles(dq, q, do, lse2, delta, K_head, V_head, sk_t, sv_t, mid_hi, hi, offs_m, offs_d, d_ok, q_pos,
                   kv_len, Tk, window, seed, bh, dropout_p, qk_scale,
                   BLOCK_N, True, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dq = dq * sm_scale
    tl.store(DQ + b64 * sdq_b + h64 * sdq_h + offs_m[:, None] * sdq_t + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=ld_mask)


@triton.jit(do_not_specialize=["Tq", "Tk", "seed"])
def _keep_mask_kernel(OUT, H, Tq, Tk, seed, dropout_p, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    bh = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, bh, offs_m[:, None], offs_n[None, :], Tk, dropout_p)
    ptrs = OUT + bh.to(tl.int64) * Tq * Tk + offs_m[:, None].to(tl.int64) * Tk + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(offs_m < Tq)[:, None] & (offs_n < Tk)[None, :])


# --------------------------------------------------------------------------------------------
# Autotuning (real GPUs only)
# --------------------------------------------------------------------------------------------

# H100 allows 227 KiB of shared memory per block. The estimate below is deliberately coarse
# (it charges every streamed tile for every stage and a score tile besides); a config that
# still does not fit is skipped by the autotuner, which times OutOfResources as infinite.
_SMEM_BUDGET = 216 * 1024


def _smem_estimate(cfg, rows_key, streamed_key, resident, streamed, head_dim, elem_bytes):
    rows, cols = cfg.kwargs[rows_key], cfg.kwargs[streamed_key]
    stages = max(cfg.num_stages, 1)
    return elem_bytes * (resident * rows * head_dim + stages * streamed * cols * head_dim + rows * cols)


def _pruner(rows_key: str, streamed_key: str, resident: int, streamed: int):
    """Drop configs whose tiles cannot fit in shared memory for this head dim and dtype."""

    def prune(configs, named_args, **kwargs):
        args = {**(named_args or {}), **kwargs}
        head_dim = max(16, triton.next_power_of_2(int(args.get("HEAD_DIM", 64))))
        q = args.get("Q")
        elem = q.element_size() if hasattr(q, "element_size") else 4
        sized = [(_smem_estimate(c, rows_key, streamed_key, resident, streamed, head_dim, elem), c) for c in configs]
        kept = [c for est, c in sized if est <= _SMEM_BUDGET]
        return kept or [min(sized, key=lambda item: item[0])[1]]

    return prune


def _configs(entries: Sequence[Tuple[int, int, int, int]]):
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` entries, plus an unpipelined small config
    as the last resort for fp32 with the largest head dims."""
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in entries]
    configs.append(triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1))
    return configs


_TUNE_KEY = ["HEAD_DIM", "TQ_BUCKET", "TK_BUCKET", "CAUSAL", "HAS_WINDOW", "DROPOUT", "DOT_PREC"]

# Forward and dQ programs hold a query block (q; for dQ also dO) and stream key blocks (k, v);
# dK/dV programs hold a key block (k, v) and stream query blocks (q, dO).
_PRUNE = {
    "fwd": _pruner("BLOCK_M", "BLOCK_N", resident=1, streamed=2),
    "dq": _pruner("BLOCK_M", "BLOCK_N", resident=2, streamed=2),
    "dkdv": _pruner("BLOCK_N", "BLOCK_M", resident=2, streamed=2),
}

_fwd_tuned = triton.autotune(
    configs=_configs([
        (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 4, 4), (128, 64, 4, 3), (128, 64, 8, 3),
        (128, 32, 4, 3), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 4), (64, 32, 4, 2),
    ]),
    key=_TUNE_KEY,
    prune_configs_by={"early_config_prune": _PRUNE["fwd"]},
)(_attn_fwd)

_dq_tuned = triton.autotune(
    configs=_configs([
        (128, 64, 8, 3), (128, 64, 4, 2), (128, 32, 4, 3), (128, 32, 8, 2),
        (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (64, 32, 4, 2),
    ]),
    key=_TUNE_KEY,
    prune_configs_by={"early_config_prune": _PRUNE["dq"]},
)(_attn_bwd_dq)

_dkdv_tuned = triton.autotune(
    configs=_configs([
        (32, 128, 4, 3), (32, 128, 8, 2), (64, 128, 8, 2), (64, 128, 8, 3),
        (32, 64, 4, 3), (32, 64, 4, 2), (64, 64, 4, 3), (64, 64, 4, 2),
    ]),
    key=_TUNE_KEY,
    prune_configs_by={"early_config_prune": _PRUNE["dkdv"]},
)(_attn_bwd_dkdv)

# Problems this small (Tq * Tk) are launch-bound, so tuning them buys nothing but compile time;
# they, and every problem when GPT1_ATTENTION_AUTOTUNE=0, take the first fixed config that fits.
_SMALL_PROBLEM = 256 * 256
_FIXED = {
    "fwd": _configs([(64, 64, 4, 2), (64, 32, 4, 2)]),
    "dq": _configs([(64, 64, 4, 2), (64, 32, 4, 2)]),
    "dkdv": _configs([(32, 64, 4, 2), (32, 32, 4, 2)]),
}


def _launch(kernel, tuned, which: str, rows: int, block_key: str, bh: int, args: tuple, meta: dict, pairs: int):
    """Launch with fixed blocks (interpreter, small problems, tuning off) or through the autotuner."""
    if triton_interpreting():
        blocks = INTERPRET_BLOCKS[which]
        kernel[(triton.cdiv(rows, blocks[block_key]), bh)](*args, **meta, **blocks)
    elif pairs <= _SMALL_PROBLEM or os.environ.get("GPT1_ATTENTION_AUTOTUNE", "1") == "0":
        cfg = _PRUNE[which](_FIXED[which], {"Q": args[0]}, **meta)[0]
        kernel[(triton.cdiv(rows, cfg.kwargs[block_key]), bh)](
            *args, **meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages
        )
    else:
        tuned[lambda m: (triton.cdiv(rows, m[block_key]), bh)](*args, **meta)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def _bucket(n: int) -> int:
    """Sequence-length bucket for the autotuner key (powers of two, at least 64)."""
    return max(64, triton.next_power_of_2(max(int(n), 1)))


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _strides(t: torch.Tensor) -> Tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _meta(q: torch.Tensor, causal: bool, window: Optional[int], key_lengths, dropout_p: float) -> dict:
    d = q.shape[-1]
    return {
        "HEAD_DIM": d,
        "BLOCK_D": max(16, triton.next_power_of_2(d)),
        "CAUSAL": bool(causal),
        "HAS_WINDOW": window is not None,
        "HAS_KEYLEN": key_lengths is not None,
        "DROPOUT": dropout_p > 0.0,
        "DOT_PREC": _dot_precision(q.dtype),
    }


def _seed_value(seed: Optional[torch.Tensor]) -> int:
    return 0 if seed is None else int(seed.reshape(-1)[0].item())


def _forward_impl(q, k, v, key_lengths, seed, causal, window, scale, dropout_p):
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        lse.fill_(float("inf"))
        return out, lse
    if Tk == 0:
        out.zero_()
        lse.fill_(float("inf"))
        return out, lse
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    keylen = key_lengths if key_lengths is not None else q  # placeholder pointer, never read
    args = (q, k, v, out, lse, keylen, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            H, Tq, Tk, 0 if window is None else int(window), _seed_value(seed), float(scale) * _LOG2E,
            float(dropout_p), _bucket(Tq), _bucket(Tk))
    _launch(_attn_fwd, _fwd_tuned, "fwd", Tq, "BLOCK_M", B * H, args,
            _meta(q, causal, window, key_lengths, dropout_p), Tq * Tk)
    return out, lse


def _backward_impl(grad_out, q, k, v, out, lse, key_lengths, seed, causal, window, scale, dropout_p):
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    grad_out, q, k, v, out = (_unit_last(t) for t in (grad_out, q, k, v, out))
    block_d = max(16, triton.next_power_of_2(D))
    delta = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    delta_block = INTERPRET_BLOCKS["delta"]["BLOCK_M"] if triton_interpreting() else 64
    _attn_bwd_delta[(triton.cdiv(Tq, delta_block), B * H)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), H, Tq,
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=delta_block,
    )
    keylen = key_lengths if key_lengths is not None else q
    meta = _meta(q, causal, window, key_lengths, dropout_p)
    common = (H, Tq, Tk, 0 if window is None else int(window), _seed_value(seed),
              float(scale), float(scale) * _LOG2E, float(dropout_p), _bucket(Tq), _bucket(Tk))
    _launch(_attn_bwd_dkdv, _dkdv_tuned, "dkdv", Tk, "BLOCK_N", B * H,
            (q, k, v, grad_out, dk, dv, lse, delta, keylen, *_strides(q), *_strides(k), *_strides(v),
             *_strides(grad_out), *_strides(dk), *_strides(dv), *common), meta, Tq * Tk)
    _launch(_attn_bwd_dq, _dq_tuned, "dq", Tq, "BLOCK_M", B * H,
            (q, k, v, grad_out, dq, lse, delta, keylen, *_strides(q), *_strides(k), *_strides(v),
             *_strides(grad_out), *_strides(dq), *common), meta, Tq * Tk)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# torch.library custom ops (opaque to torch.compile, differentiable through register_autograd)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("gpt1::flash_attention_fwd", mutates_args=())
def _flash_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    causal: bool,
    window: Optional[int],
    scale: float,
    dropout_p: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    return _forward_impl(q, k, v, key_lengths, seed, causal, window, scale, dropout_p)


@_flash_attention_fwd.register_fake
def _(q, k, v, key_lengths, seed, causal, window, scale, dropout_p):
    B, H, Tq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, Tq), dtype=torch.float32)


@torch.library.custom_op("gpt1::flash_attention_bwd", mutates_args=())
def _flash_attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_lengths: Optional[torch.Tensor],
    seed: Optional[torch.Tensor],
    causal: bool,
    window: Optional[int],
    scale: float,
    dropout_p: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward_impl(grad_out, q, k, v, out, lse, key_lengths, seed, causal, window, scale, dropout_p)


@_flash_attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, key_lengths, seed, causal, window, scale, dropout_p):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_lengths, seed, causal, window, scale, dropout_p = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_lengths, seed)
    ctx.causal, ctx.window, ctx.scale, ctx.dropout_p = causal, window, scale, dropout_p


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_lengths, seed = ctx.saved_tensors
    dq, dk, dv = _flash_attention_bwd(grad_out, q, k, v, out, lse, key_lengths, seed, ctx.causal, ctx.window,
                                      ctx.scale, ctx.dropout_p)
    return dq, dk, dv, None, None, None, None, None, None


_flash_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _common_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def _seed_tensor(seed) -> torch.Tensor:
    if seed is None:
        # Drawn from torch's default CPU generator, so torch.manual_seed reproduces a run; kept
        # on the CPU so reading it in the op costs no device synchronisation.
        return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        return seed.reshape(1).to(device="cpu", dtype=torch.int64)
    return torch.tensor([int(seed) & 0x7FFFFFFF], dtype=torch.int64)


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    dropout_p: float = 0.0,
    key_lengths: Optional[torch.Tensor] = None,
    window: Optional[int] = None,
    scale: Optional[float] = None,
    seed=None,
) -> torch.Tensor:
    """Flash-attention over ``(B, H, T, D)`` tensors, differentiable and ``torch.compile``-able.

    ``k``/``v`` may be longer than ``q`` (queries aligned to the newest keys); ``key_lengths``
    pads keys per example; ``window`` keeps only the ``window`` most recent keys; rows that see
    no key return zeros. ``dropout_p`` drops attention probabilities inside the kernel with a
    mask derived from ``seed`` (an int or a one-element tensor; when None, one is drawn from
    torch's default CPU generator). See :func:`attention_keep_mask` for that mask.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("flash_attention expects (batch, heads, time, head_dim) tensors")
    B, H, Tq, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:3] != k.shape[:3] or k.shape[3] != D or v.shape[3] != D:
        raise ValueError(f"incompatible shapes q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}")
    if D > _MAX_HEAD_DIM:
        raise ValueError(f"head_dim {D} is larger than the supported {_MAX_HEAD_DIM}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), not {dropout_p}")
    if window is not None and window < 1:
        raise ValueError(f"window must be at least 1, not {window}")
    if dropout_p > 0.0 and Tq * k.shape[2] > 2**32:
        raise ValueError("in-kernel dropout numbers at most 2**32 query-key pairs per head")
    if key_lengths is not None:
        if key_lengths.shape != (B,):
            raise ValueError(f"key_lengths must have shape ({B},), not {tuple(key_lengths.shape)}")
        key_lengths = key_lengths.to(device=q.device, dtype=torch.int32)
    dtype = _common_dtype(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dropout_p = float(dropout_p)
    seed_t = _seed_tensor(seed) if dropout_p > 0.0 else None
    out, _ = _flash_attention_fwd(q, k, v, key_lengths, seed_t, bool(causal), window, scale, dropout_p)
    return out


def attention_keep_mask(
    shape: Sequence[int],
    dropout_p: float,
    seed,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """The boolean ``(B, H, Tq, Tk)`` keep-mask that :func:`flash_attention` applies for ``seed``.

    Feed it to ``attention_reference(..., dropout_p=dropout_p, keep_mask=...)`` to reproduce
    the kernel's dropout exactly. ``seed`` is the int or tensor given to ``flash_attention``.
    """
    B, H, Tq, Tk = (int(s) for s in shape)
    if device is None:
        device = "cpu" if triton_interpreting() or not torch.cuda.is_available() else "cuda"
    out = torch.empty((B, H, Tq, Tk), dtype=torch.int8, device=device)
    if out.numel() == 0:
        return out.bool()
    blocks = INTERPRET_BLOCKS["mask"] if triton_interpreting() else {"BLOCK_M": 64, "BLOCK_N": 64}
    seed_value = _seed_value(_seed_tensor(seed))
    grid = (triton.cdiv(Tq, blocks["BLOCK_M"]), triton.cdiv(Tk, blocks["BLOCK_N"]), B * H)
    _keep_mask_kernel[grid](out, H, Tq, Tk, seed_value, float(dropout_p), **blocks)
    return out.bool()
