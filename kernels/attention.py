"""Causal flash-attention in Triton: forward, backward and in-kernel attention dropout.

Conventions (shapes ``(B, H, T, D)``, bottom-right alignment of queries against a longer key
sequence, ``key_lengths`` padding, ``window`` bands, zero rows) are those of
:func:`gpt1_kernels.reference.attention_reference`.

The forward pass keeps only the output and the per-row log-sum-exp (fp32, in log2 units of
the scaled scores, as the kernels use ``exp2``); the backward pass recomputes the
probabilities tile by tile: one kernel per key block for dK/dV (each program owns its rows,
so no atomics) and one per query block for dQ. Tiles that the causal mask, the window band
or the key padding hide completely are never visited; tiles that straddle a boundary pay
for element masks, and interior tiles load without masks. The grid is
``(batch * heads, blocks)``; forward and dQ programs take query blocks last-first, so the
causal rows with the most keys start first.

Dropout regenerates its keep-mask wherever it is needed, so nothing of size ``T x T`` is
ever stored: Philox4x32 keyed by the 31-bit seed (low half) and ``batch * head`` (high half)
with counter ``(key // 4, query)``, whose four outputs serve four adjacent keys.
:func:`attention_keep_mask` materialises the same mask for tests.

Determinism: for a given launch configuration the results are bit-identical run to run.
On a GPU the block sizes of large problems come from the autotuner, which chooses afresh in
each process, so two processes may differ in the last bits. Under
``torch.use_deterministic_algorithms(True)`` (or ``GPT1_ATTENTION_AUTOTUNE=0``) every problem
uses the fixed configuration for its head dim and dtype, and results are bit-identical
across processes on the same GPU and software.
"""

import functools
import math
import os
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import eager
from .availability import kernel_device
from .host import INTERPRETING, as_dtype, cdiv, next_power_of_2

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # pragma: no cover - every supported Triton has it
    class OutOfResources(Exception):
        pass

__all__ = ["flash_attention", "attention_keep_mask"]

_LOG2E = 1.4426950408889634
_MAX_HEAD_DIM = 256
# CUDA grid limits: 2**31 - 1 programs on axis 0, 65535 on axes 1 and 2.
_MAX_GRID_X = 2**31 - 1
_MAX_GRID_YZ = 65535

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
def _keep(seed, bh, rows, col_start, drop_thr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Dropout keep-mask of queries ``rows`` (``BLOCK_M``) against keys ``col_start ..
    col_start + BLOCK_N`` (``col_start`` a multiple of 4), as a ``[BLOCK_M, BLOCK_N]`` tile."""
    # Key: the seed (31 bits, so it never carries) in the low half, batch*head in the high
    # half, so heads never share a stream. Counter (key // 4, query): no product that could
    # overflow, and one Philox call yields the four adjacent keys' draws.
    key = bh.to(tl.int64) * 4294967296 + seed
    groups = col_start // 4 + tl.arange(0, BLOCK_N // 4)
    c0 = (groups[None, :] + rows[:, None] * 0).to(tl.uint32)
    c1 = (rows[:, None] + groups[None, :] * 0).to(tl.uint32)
    zero = c0 * 0
    r0, r1, r2, r3 = tl.philox(key, c0, c1, zero, zero)
    # Interleave so that key 4g + j takes output j of group g.
    bits = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [BLOCK_M, BLOCK_N])
    return (bits >> 1).to(tl.int32, bitcast=True) >= drop_thr


@triton.jit
def _load_rows(ptrs, row_ok, d_ok, MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """A ``[rows, BLOCK_D]`` tile; interior tiles (``MASK`` false) have every row in range."""
    if MASK:
        x = tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return x


@triton.jit
def _load_vec(ptrs, ok, other, MASK: tl.constexpr):
    if MASK:
        x = tl.load(ptrs, mask=ok, other=other)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _query_block_key_range(first, last, kv_len, window, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                           HAS_WINDOW: tl.constexpr):
    """Key tiles for query positions ``first..last``: ``[lo, mid_lo)`` and ``[mid_hi, hi)`` need
    element masks; ``[mid_lo, mid_hi)`` is whole tiles below ``kv_len`` that every query sees."""
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
               offs_m, offs_d, d_ok, q_pos, kv_len, window, seed, bh, drop_thr, qk_scale,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr,
               CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < kv_len
        k = _load_rows(K_head + offs_n[:, None] * stride_kt + offs_d[None, :], key_ok, d_ok, MASK, EVEN_D)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        if MASK:
            ok = _visible(q_pos[:, None], offs_n[None, :], kv_len, window, CAUSAL, HAS_WINDOW)
            qk = tl.where(ok, qk, float("-inf"))
        # qk_scale > 0, so the scaled row max is the max of the scaled row.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # A row that has seen no key yet keeps m = -inf; shift by 0 there so exp2 gives 0, not NaN.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * qk_scale - m_ref[:, None])  # scale and shift in one FMA
        alpha = tl.math.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            # The normaliser l uses the undropped probabilities; only the value sum is thinned.
            p = tl.where(_keep(seed, bh, offs_m, start_n, drop_thr, BLOCK_M, BLOCK_N), p, 0.0)
        v = _load_rows(V_head + offs_n[:, None] * stride_vt + offs_d[None, :], key_ok, d_ok, MASK, EVEN_D)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["Tq", "Tk", "window", "seed", "drop_thr"])
def _attn_fwd(Q, K, V, O, LSE, KEYLEN,
              sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, so_b, so_h, so_t,
              H, Tq, Tk, window, seed, qk_scale, dropout_p, drop_thr,
              TQ_BUCKET, TK_BUCKET,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, CAUSAL: tl.constexpr,
              HAS_WINDOW: tl.constexpr, HAS_KEYLEN: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)
    # Last query block first: under a causal mask it has the most keys to visit.
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
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
                               q_pos, kv_len, window, seed, bh, drop_thr, qk_scale,
                               BLOCK_M, BLOCK_N, True, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_head, V_head, sk_t, sv_t, mid_lo, mid_hi, offs_m, offs_d, d_ok,
                               q_pos, kv_len, window, seed, bh, drop_thr, qk_scale,
                               BLOCK_M, BLOCK_N, False, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K_head, V_head, sk_t, sv_t, mid_hi, hi, offs_m, offs_d, d_ok,
                               q_pos, kv_len, window, seed, bh, drop_thr, qk_scale,
                               BLOCK_M, BLOCK_N, True, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)

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
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
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
                offs_n, n_first, offs_d, d_ok, shift, kv_len, Tq, window, seed, bh, dropout_p, drop_thr, qk_scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr,
                CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr):
    # Works on transposed tiles (keys x queries) so that dK and dV come out of plain dots.
    for start_m in range(start, stop, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < Tq
        q = _load_rows(Q_head + offs_m[:, None] * sq_t + offs_d[None, :], row_ok, d_ok, MASK, EVEN_D)
        lse2 = _load_vec(LSE_row + offs_m, row_ok, float("inf"), MASK)
        qk_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
        if MASK:
            ok = _visible(offs_m[None, :] + shift, offs_n[:, None], kv_len, window, CAUSAL, HAS_WINDOW)
            qk_t = tl.where(ok, qk_t, float("-inf"))
        p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])
        do = _load_rows(DO_head + offs_m[:, None] * sdo_t + offs_d[None, :], row_ok, d_ok, MASK, EVEN_D)
        delta = _load_vec(DELTA_row + offs_m, row_ok, 0.0, MASK)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        if DROPOUT:
            # Drawn in the forward's (query, key) orientation; transposed as bytes.
            keep = tl.trans(_keep(seed, bh, offs_m, n_first, drop_thr, BLOCK_M, BLOCK_N).to(tl.int8)) != 0
            pd_t = tl.where(keep, p_t, 0.0)
            dp_t = tl.where(keep, dp_t * (1.0 / (1.0 - dropout_p)), 0.0)
        else:
            pd_t = p_t
        dv = tl.dot(pd_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PREC)
    return dk, dv


@triton.jit(do_not_specialize=["Tq", "Tk", "window", "seed", "drop_thr"])
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, KEYLEN,
                   sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sdo_b, sdo_h, sdo_t,
                   sdk_b, sdk_h, sdk_t, sdv_b, sdv_h, sdv_t,
                   H, Tq, Tk, window, seed, sm_scale, qk_scale, dropout_p, drop_thr,
                   TQ_BUCKET, TK_BUCKET,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, CAUSAL: tl.constexpr,
                   HAS_WINDOW: tl.constexpr, HAS_KEYLEN: tl.constexpr, DROPOUT: tl.constexpr,
                   DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)
    # Natural order is already heaviest first: early key blocks are seen by the most queries.
    pid_n = tl.program_id(1)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    Q_head = Q + b64 * sq_b + h64 * sq_h
    DO_head = DO + b64 * sdo_b + h64 * sdo_h
    LSE_row = LSE + bh.to(tl.int64) * Tq
    DELTA_row = DELTA + bh.to(tl.int64) * Tq

    n_first = pid_n * BLOCK_N
    offs_n = n_first + tl.arange(0, BLOCK_N)
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
    n_last = tl.minimum(n_first + BLOCK_N, kv_len) - 1  # last unpadded key of this block
    # Query rows that can see at least one key of the block.
    lo = zero
    if CAUSAL:
        lo = tl.maximum(n_first - shift, zero) // BLOCK_M * BLOCK_M
    hi = Tq + zero
    if HAS_WINDOW:
        hi = tl.minimum(hi, tl.maximum(n_last + window - shift, zero))
    hi = tl.where(n_last < n_first, zero, hi)
    # Whole query tiles (below Tq) that see every key of the block.
    full_lo = lo
    if CAUSAL:
        full_lo = (tl.maximum(n_first + BLOCK_N - 1 - shift, zero) + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    full_lo = tl.where(n_first + BLOCK_N > kv_len, hi, full_lo)
    full_hi = Tq // BLOCK_M * BLOCK_M + zero
    if HAS_WINDOW:
        full_hi = tl.minimum(full_hi, tl.maximum(n_first + window - shift, zero) // BLOCK_M * BLOCK_M)
    mid_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    mid_hi = tl.minimum(tl.maximum(full_hi, mid_lo), hi)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, sq_t, sdo_t, lo, mid_lo,
                         offs_n, n_first, offs_d, d_ok, shift, kv_len, Tq, window, seed, bh, dropout_p, drop_thr,
                         qk_scale, BLOCK_M, BLOCK_N, True, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, sq_t, sdo_t, mid_lo, mid_hi,
                         offs_n, n_first, offs_d, d_ok, shift, kv_len, Tq, window, seed, bh, dropout_p, drop_thr,
                         qk_scale, BLOCK_M, BLOCK_N, False, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dk, dv = _dkdv_tiles(dk, dv, k, v, Q_head, DO_head, LSE_row, DELTA_row, sq_t, sdo_t, mid_hi, hi,
                         offs_n, n_first, offs_d, d_ok, shift, kv_len, Tq, window, seed, bh, dropout_p, drop_thr,
                         qk_scale, BLOCK_M, BLOCK_N, True, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dk = dk * sm_scale
    if DROPOUT:
        dv = dv * (1.0 / (1.0 - dropout_p))
    tl.store(DK + b64 * sdk_b + h64 * sdk_h + offs_n[:, None] * sdk_t + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=kv_mask)
    tl.store(DV + b64 * sdv_b + h64 * sdv_h + offs_n[:, None] * sdv_t + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=kv_mask)


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, K_head, V_head, stride_kt, stride_vt, start, stop,
              offs_m, offs_d, d_ok, q_pos, kv_len, window, seed, bh, dropout_p, drop_thr, qk_scale,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, EVEN_D: tl.constexpr,
              CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < kv_len
        k = _load_rows(K_head + offs_n[:, None] * stride_kt + offs_d[None, :], key_ok, d_ok, MASK, EVEN_D)
        v = _load_rows(V_head + offs_n[:, None] * stride_vt + offs_d[None, :], key_ok, d_ok, MASK, EVEN_D)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        if MASK:
            ok = _visible(q_pos[:, None], offs_n[None, :], kv_len, window, CAUSAL, HAS_WINDOW)
            qk = tl.where(ok, qk, float("-inf"))
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        if DROPOUT:
            keep = _keep(seed, bh, offs_m, start_n, drop_thr, BLOCK_M, BLOCK_N)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)
    return dq


@triton.jit(do_not_specialize=["Tq", "Tk", "window", "seed", "drop_thr"])
def _attn_bwd_dq(Q, K, V, DO, DQ, LSE, DELTA, KEYLEN,
                 sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, sdo_b, sdo_h, sdo_t,
                 sdq_b, sdq_h, sdq_t,
                 H, Tq, Tk, window, seed, sm_scale, qk_scale, dropout_p, drop_thr,
                 TQ_BUCKET, TK_BUCKET,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_WINDOW: tl.constexpr, HAS_KEYLEN: tl.constexpr, DROPOUT: tl.constexpr,
                 DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # heaviest causal query blocks first
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
                   kv_len, window, seed, bh, dropout_p, drop_thr, qk_scale,
                   BLOCK_M, BLOCK_N, True, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dq = _dq_tiles(dq, q, do, lse2, delta, K_head, V_head, sk_t, sv_t, mid_lo, mid_hi, offs_m, offs_d, d_ok, q_pos,
                   kv_len, window, seed, bh, dropout_p, drop_thr, qk_scale,
                   BLOCK_M, BLOCK_N, False, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dq = _dq_tiles(dq, q, do, lse2, delta, K_head, V_head, sk_t, sv_t, mid_hi, hi, offs_m, offs_d, d_ok, q_pos,
                   kv_len, window, seed, bh, dropout_p, drop_thr, qk_scale,
                   BLOCK_M, BLOCK_N, True, EVEN_D, CAUSAL, HAS_WINDOW, DROPOUT, DOT_PREC)
    dq = dq * sm_scale
    tl.store(DQ + b64 * sdq_b + h64 * sdq_h + offs_m[:, None] * sdq_t + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=ld_mask)


@triton.jit(do_not_specialize=["Tq", "Tk", "seed", "drop_thr"])
def _keep_mask_kernel(OUT, Tq, Tk, seed, drop_thr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, bh, offs_m, pid_n * BLOCK_N, drop_thr, BLOCK_M, BLOCK_N)
    ptrs = OUT + bh.to(tl.int64) * Tq * Tk + offs_m[:, None].to(tl.int64) * Tk + offs_n[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(offs_m < Tq)[:, None] & (offs_n < Tk)[None, :])


# --------------------------------------------------------------------------------------------
# Launch configurations
# --------------------------------------------------------------------------------------------

# H100 allows 227 KiB of shared memory per block. The estimate below is deliberately coarse
# (it charges every streamed tile for every stage and a score tile besides); a config that
# still does not fit is skipped by the autotuner, which times OutOfResources as infinite, and
# by the fixed-config launcher, which falls back to the next candidate.
_SMEM_BUDGET = 216 * 1024

# Per kernel: (key of the resident block, key of the streamed block, resident tiles, streamed
# tiles). Forward and dQ programs hold a query block (q; for dQ also dO) and stream key blocks
# (k, v); dK/dV programs hold a key block (k, v) and stream query blocks (q, dO).
_SMEM_SHAPES = {
    "fwd": ("BLOCK_M", "BLOCK_N", 1, 2),
    "dq": ("BLOCK_M", "BLOCK_N", 2, 2),
    "dkdv": ("BLOCK_N", "BLOCK_M", 2, 2),
}


def smem_estimate(which: str, cfg, head_dim: int, elem_bytes: int) -> int:
    """Estimated shared memory (bytes) of ``cfg`` for kernel ``which`` at ``head_dim``."""
    rows_key, streamed_key, resident, streamed = _SMEM_SHAPES[which]
    rows, cols = cfg.kwargs[rows_key], cfg.kwargs[streamed_key]
    d = _block_d(int(head_dim))
    stages = max(cfg.num_stages, 1)
    return elem_bytes * (resident * rows * d + stages * streamed * cols * d + rows * cols)


def prune_configs(which: str, configs, head_dim: int, elem_bytes: int) -> list:
    """The configs whose estimate fits the budget, in their order; the smallest if none does.

    The autotuner and the fixed-config path both choose through this."""
    sized = [(smem_estimate(which, c, head_dim, elem_bytes), c) for c in configs]
    kept = [c for est, c in sized if est <= _SMEM_BUDGET]
    return kept or [min(sized, key=lambda item: item[0])[1]]


def _autotune_pruner(which: str):
    def prune(configs, named_args, **kwargs):
        args = {**(named_args or {}), **kwargs}
        q = args.get("Q")
        elem = q.element_size() if hasattr(q, "element_size") else 4
        return prune_configs(which, configs, int(args.get("HEAD_DIM", 64)), elem)

    return prune


def _configs(entries: Sequence[Tuple[int, int, int, int]]):
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` entries, plus an unpipelined small config
    as the last resort for fp32 with the largest head dims."""
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in entries]
    configs.append(triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1))
    return configs


_TUNE_KEY = ["HEAD_DIM", "TQ_BUCKET", "TK_BUCKET", "CAUSAL", "HAS_WINDOW", "DROPOUT", "DOT_PREC"]


def _autotuned(kernel, which: str, entries: Sequence[Tuple[int, int, int, int]]):
    return triton.autotune(configs=_configs(entries), key=_TUNE_KEY,
                           prune_configs_by={"early_config_prune": _autotune_pruner(which)})(kernel)


# Not in the forward list: (BLOCK_M 128, BLOCK_N 32, 4 warps, 3 stages). On an H200 with
# triton 3.6 it made an illegal memory access without dropout (2026-11-30, alone among the
# configs of the three kernels, each launched on its own at B 32, H 12, T 512, D 64 bf16,
# with and without dropout); as a candidate it poisoned the CUDA context while autotuning.
_fwd_tuned = _autotuned(_attn_fwd, "fwd", [
    (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 4, 4), (128, 64, 4, 3), (128, 64, 8, 3),
    (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 4), (64, 32, 4, 2),
])
_dq_tuned = _autotuned(_attn_bwd_dq, "dq", [
    (128, 64, 8, 3), (128, 64, 4, 2), (128, 32, 4, 3), (128, 32, 8, 2),
    (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (64, 32, 4, 2),
])
_dkdv_tuned = _autotuned(_attn_bwd_dkdv, "dkdv", [
    (32, 128, 4, 3), (32, 128, 8, 2), (64, 128, 8, 2), (64, 128, 8, 3),
    (32, 64, 4, 3), (32, 64, 4, 2), (64, 64, 4, 3), (64, 64, 4, 2),
])

# Small problems (Tq * Tk) skip tuning: it would cost a compile per config for every new
# shape, and their run time is expected to be dominated by the launch (not measured here).
_SMALL_PROBLEM = 256 * 256
_FIXED = {
    "fwd": _configs([(64, 64, 4, 2), (64, 32, 4, 2)]),
    "dq": _configs([(64, 64, 4, 2), (64, 32, 4, 2)]),
    "dkdv": _configs([(32, 64, 4, 2), (32, 32, 4, 2)]),
}
# The fixed candidates and the index of the one that launched, per (kernel, device, dtype, meta).
_FIXED_CHOICE: dict = {}


def fixed_candidates(which: str, head_dim: int, elem_bytes: int) -> list:
    """The fixed configs of kernel ``which`` to try, in order, for this head dim and element size."""
    return prune_configs(which, _FIXED[which], head_dim, elem_bytes)


def use_fixed_config(pairs: int) -> bool:
    """Fixed block sizes instead of the autotuner: small problems, ``GPT1_ATTENTION_AUTOTUNE=0``,
    and deterministic mode (the autotuner's choice may differ from one process to the next)."""
    return (pairs <= _SMALL_PROBLEM or os.environ.get("GPT1_ATTENTION_AUTOTUNE", "1") == "0"
            or torch.are_deterministic_algorithms_enabled())


def launch_grid(bh: int, rows: int, block: int) -> Tuple[int, int]:
    """The ``(batch * heads, row blocks)`` grid, checked against CUDA's limits per axis."""
    blocks = cdiv(int(rows), int(block))
    if bh > _MAX_GRID_X:
        raise ValueError(f"batch * heads = {bh} is more than the {_MAX_GRID_X} programs a CUDA grid axis takes")
    if blocks > _MAX_GRID_YZ:
        raise ValueError(f"{rows} positions in blocks of {block} need {blocks} programs, more than the "
                         f"{_MAX_GRID_YZ} CUDA allows on grid axis 1: use shorter sequences")
    return bh, blocks


def _launch_fixed(kernel, which: str, rows: int, block_key: str, bh: int, args: tuple, meta: dict) -> None:
    q = args[0]
    key = (which, q.device, q.dtype, tuple(meta.items()))
    candidates, start = _FIXED_CHOICE.get(key) or (fixed_candidates(which, meta["HEAD_DIM"], q.element_size()), 0)
    for index in range(start, len(candidates)):
        cfg = candidates[index]
        try:
            kernel[launch_grid(bh, rows, cfg.kwargs[block_key])](
                *args, **meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages
            )
        except OutOfResources:
            # The shared-memory estimate is coarse; the next (smaller) candidate may fit.
            if index + 1 == len(candidates):
                raise
            continue
        _FIXED_CHOICE[key] = (candidates, index)
        return


def _launch(kernel, tuned, which: str, rows: int, block_key: str, bh: int, args: tuple, meta: dict, pairs: int):
    """Launch with fixed blocks (interpreter, small problems, tuning off, deterministic mode) or
    through the autotuner."""
    if INTERPRETING:
        blocks = INTERPRET_BLOCKS[which]
        kernel[launch_grid(bh, rows, blocks[block_key])](*args, **meta, **blocks)
    elif use_fixed_config(pairs):
        _launch_fixed(kernel, which, rows, block_key, bh, args, meta)
    else:
        tuned[lambda m: launch_grid(bh, rows, m[block_key])](*args, **meta)


# --------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------


def _bucket(n: int) -> int:
    """Sequence-length bucket for the autotuner key (powers of two, at least 64)."""
    return max(64, next_power_of_2(n))


def _block_d(head_dim: int) -> int:
    return max(16, next_power_of_2(head_dim))


def _strides(t: torch.Tensor) -> Tuple[int, int, int]:
    return t.stride()[:3]


def _unit_last(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype`` with unit stride on the head dim (copies only if it must)."""
    t = as_dtype(t, dtype)
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.lru_cache(maxsize=None)
def _cached_meta(d: int, causal: bool, window: bool, key_lengths: bool, dropout: bool, dot_prec: str) -> dict:
    block_d = _block_d(d)
    return {
        "HEAD_DIM": d,
        "BLOCK_D": block_d,
        "EVEN_D": d == block_d,
        "CAUSAL": causal,
        "HAS_WINDOW": window,
        "HAS_KEYLEN": key_lengths,
        "DROPOUT": dropout,
        "DOT_PREC": dot_prec,
    }


def _meta(q: torch.Tensor, causal: bool, window: Optional[int], key_lengths, dropout_p: float) -> dict:
    """The kernels' compile-time arguments (a shared dict: never modify it)."""
    ieee = q.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    return _cached_meta(q.shape[-1], bool(causal), window is not None, key_lengths is not None, dropout_p > 0.0,
                        "ieee" if ieee else "tf32")


def seed_value(seed: Optional[torch.Tensor]) -> int:
    """The kernels' seed: the low 31 bits, so a negative or large seed cannot carry into the
    batch*head half of the Philox key."""
    return 0 if seed is None else int(seed.reshape(-1)[0].item()) & 0x7FFFFFFF


def dropout_threshold(p: float) -> int:
    """An element is kept when its 31 random bits are at least this: probability 1 - p (to 2**-31)."""
    return min(int(float(p) * 2**31), 2**31 - 1)


def _forward_impl(q, k, v, key_lengths, seed, causal, window, scale, dropout_p):
    """``(out, lse)``: the attention output and the per-row log-sum-exp (fp32, log2 units)."""
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
    dtype = q.dtype
    q, k, v = _unit_last(q, dtype), _unit_last(k, dtype), _unit_last(v, dtype)
    keylen = key_lengths if key_lengths is not None else q  # placeholder pointer, never read
    args = (q, k, v, out, lse, keylen, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
            H, Tq, Tk, 0 if window is None else int(window), seed_value(seed), float(scale) * _LOG2E,
            float(dropout_p), dropout_threshold(dropout_p), _bucket(Tq), _bucket(Tk))
    _launch(_attn_fwd, _fwd_tuned, "fwd", Tq, "BLOCK_M", B * H, args,
            _meta(q, causal, window, key_lengths, dropout_p), Tq * Tk)
    return out, lse


def _backward_impl(grad_out, q, k, v, out, lse, key_lengths, seed, causal, window, scale, dropout_p):
    """``(dq, dk, dv)`` from the saved inputs, output and log-sum-exp."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    # The kernels' dots need one operand dtype: an upstream gradient in another dtype (fp32
    # from a loss, say) is cast to the inputs' dtype, as the unfused backward would see it.
    dtype = q.dtype
    grad_out, q, k, v, out = (_unit_last(t, dtype) for t in (grad_out, q, k, v, out))
    delta = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    delta_block = INTERPRET_BLOCKS["delta"]["BLOCK_M"] if INTERPRETING else 64
    _attn_bwd_delta[launch_grid(B * H, Tq, delta_block)](
        out, grad_out, delta, *_strides(out), *_strides(grad_out), H, Tq,
        HEAD_DIM=D, BLOCK_D=_block_d(D), BLOCK_M=delta_block,
    )
    keylen = key_lengths if key_lengths is not None else q
    meta = _meta(q, causal, window, key_lengths, dropout_p)
    input_strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
    common = (H, Tq, Tk, 0 if window is None else int(window), seed_value(seed),
              float(scale), float(scale) * _LOG2E, float(dropout_p), dropout_threshold(dropout_p),
              _bucket(Tq), _bucket(Tk))
    _launch(_attn_bwd_dkdv, _dkdv_tuned, "dkdv", Tk, "BLOCK_N", B * H,
            (q, k, v, grad_out, dk, dv, lse, delta, keylen, *input_strides, *_strides(dk), *_strides(dv), *common),
            meta, Tq * Tk)
    _launch(_attn_bwd_dq, _dq_tuned, "dq", Tq, "BLOCK_M", B * H,
            (q, k, v, grad_out, dq, lse, delta, keylen, *input_strides, *_strides(dq), *common), meta, Tq * Tk)
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# The op: a torch.library custom op for torch.compile, an autograd.Function for eager calls
# --------------------------------------------------------------------------------------------

_flash_attention_fwd = eager.custom_op("flash_attention_fwd", _forward_impl, (
    "(Tensor q, Tensor k, Tensor v, Tensor? key_lengths, Tensor? seed, bool causal, SymInt? window, float scale, "
    "float dropout_p) -> (Tensor, Tensor)"))
_flash_attention_bwd = eager.custom_op("flash_attention_bwd", _backward_impl, (
    "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? key_lengths, Tensor? seed, "
    "bool causal, SymInt? window, float scale, float dropout_p) -> (Tensor, Tensor, Tensor)"))


@_flash_attention_fwd.register_fake
def _(q, k, v, key_lengths, seed, causal, window, scale, dropout_p):
    B, H, Tq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, Tq), dtype=torch.float32)


@_flash_attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, key_lengths, seed, causal, window, scale, dropout_p):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_lengths, seed, causal, window, scale, dropout_p = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_lengths, seed)
    ctx.causal, ctx.window, ctx.scale, ctx.dropout_p = causal, window, scale, dropout_p


def _input_grads(ctx, grad_out, backward_impl):
    q, k, v, out, lse, key_lengths, seed = ctx.saved_tensors
    dq, dk, dv = backward_impl(grad_out, q, k, v, out, lse, key_lengths, seed, ctx.causal, ctx.window,
                               ctx.scale, ctx.dropout_p)
    return dq, dk, dv, None, None, None, None, None, None


def _backward(ctx, grad_out, _grad_lse):
    return _input_grads(ctx, grad_out, _flash_attention_bwd)


def _eager_backward(ctx, grad_out, _grad_lse):
    return _input_grads(ctx, grad_out, eager.backward_path(_flash_attention_bwd, _backward_impl))


_flash_attention_fwd.register_autograd(_backward, setup_context=_setup_context)
_FlashAttention = eager.autograd_function("FlashAttention", _forward_impl, _setup_context, _eager_backward, 1)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _common_dtype(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.dtype:
    device_type = "cuda" if q.is_cuda else q.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if q.dtype == k.dtype == v.dtype:
        return q.dtype
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
    mask derived from ``seed`` (an int or a one-element tensor, of which the low 31 bits are
    used; when None, one is drawn from torch's default CPU generator). See
    :func:`attention_keep_mask` for that mask. ``scale`` (default ``1/sqrt(D)``) must be positive.
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
    if key_lengths is not None:
        if key_lengths.shape != (B,):
            raise ValueError(f"key_lengths must have shape ({B},), not {tuple(key_lengths.shape)}")
        key_lengths = key_lengths.to(device=q.device, dtype=torch.int32)
    dtype = _common_dtype(q, k, v)
    q, k, v = as_dtype(q, dtype), as_dtype(k, dtype), as_dtype(v, dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not (scale > 0.0 and math.isfinite(scale)):
        # The kernels take the row max of unscaled scores, which a negative scale would invert.
        raise ValueError(f"scale must be a positive finite number, not {scale}")
    dropout_p = float(dropout_p)
    seed_t = _seed_tensor(seed) if dropout_p > 0.0 else None
    args = (q, k, v, key_lengths, seed_t, bool(causal), window, scale, dropout_p)
    out, _ = eager.call(_flash_attention_fwd, _FlashAttention, _forward_impl, args, (q, k, v))
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
        device = kernel_device()
    out = torch.empty((B, H, Tq, Tk), dtype=torch.int8, device=device)
    if out.numel() == 0:
        return out.bool()
    blocks = INTERPRET_BLOCKS["mask"] if INTERPRETING else {"BLOCK_M": 64, "BLOCK_N": 64}
    grid = (B * H, cdiv(Tq, blocks["BLOCK_M"]), cdiv(Tk, blocks["BLOCK_N"]))
    _keep_mask_kernel[grid](out, Tq, Tk, seed_value(_seed_tensor(seed)), dropout_threshold(dropout_p), **blocks)
    return out.bool()
