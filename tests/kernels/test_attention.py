"""Flash-attention kernel against the PyTorch reference: values, gradients, masks, dropout.

Without a GPU these run under ``TRITON_INTERPRET=1`` (set by ``tests/conftest.py``) on small
CPU tensors; with one, the same cases run compiled on the GPU (``tolerances.KERNEL_DEVICE``),
and the ``gpu`` tests add realistic sizes, bf16 and the autotuned configurations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import gpt1_kernels.attention as attention_module  # noqa: E402
from gpt1_kernels import triton_interpreting  # noqa: E402
from gpt1_kernels.attention import attention_keep_mask, flash_attention  # noqa: E402
from gpt1_kernels.reference import attention_reference  # noqa: E402
from tolerances import KERNEL_DEVICE, sized, tolerance  # noqa: E402

DEVICE = KERNEL_DEVICE.type


def _inputs(b, h, tq, tk, d, dtype=torch.float32, device=DEVICE, scale=1.0, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=gen) * scale
    k = torch.randn(b, h, tk, d, generator=gen) * scale
    v = torch.randn(b, h, tk, d, generator=gen)
    do = torch.randn(b, h, tq, d, generator=gen)
    q, k, v = (t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v))
    return q, k, v, do.to(device=device, dtype=dtype)


def _fwd_bwd(fn, q, k, v, do, **kw):
    out = fn(q, k, v, **kw)
    grads = torch.autograd.grad(out, (q, k, v), do)
    return out, grads


def _assert_close(actual, expected, rtol, atol, name=""):
    """|a - e| <= atol * max(max|e|, 0.1) + rtol * |e|: tolerances follow the tensor's magnitude."""
    actual, expected = actual.float(), expected.float()
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    bound = atol * expected.abs().max().clamp(min=0.1) + rtol * expected.abs()
    err = (actual - expected).abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"{name}: max error {err.max().item():.3e} exceeds tolerance"


def _check_against_reference(q, k, v, do, rtol, atol, keep_mask=None, **kw):
    out, grads = _fwd_bwd(flash_attention, q, k, v, do, **kw)
    ref_kw = {name: kw[name] for name in ("causal", "key_lengths", "window", "dropout_p", "scale") if name in kw}
    ref_out, ref_grads = _fwd_bwd(attention_reference, q, k, v, do, keep_mask=keep_mask, **ref_kw)
    assert out.dtype == q.dtype and out.shape == q.shape
    _assert_close(out, ref_out, rtol, atol, "out")
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert g.dtype == r.dtype and g.shape == r.shape
        _assert_close(g, r, rtol, atol, name)
    return out, grads


def _tol(dtype, device=DEVICE):
    rtol, atol = tolerance("attention", dtype, device)
    return dict(rtol=rtol, atol=atol)


FP32_TOL = _tol(torch.float32)
FP16_TOL = _tol(torch.float16)
# GPU sizes: longer sums, and bf16 keeps only 8 mantissa bits.
GPU_TOL = {dtype: _tol(dtype, "cuda") for dtype in (torch.float16, torch.bfloat16)}


# ------------------------------------------------------------------------------ values and grads


@pytest.mark.parametrize(
    "b,h,tq,tk,d",
    [
        (1, 1, 1, 1, 16),  # length 1
        (2, 2, 7, 7, 16),  # shorter than a block
        (1, 2, 33, 33, 32),  # one past a block multiple
        (2, 1, 70, 70, 64),  # several tiles with a ragged tail
        (1, 1, 20, 20, 128),
        # compiled on a GPU, realistic sizes cost nothing
        *sized([], [(2, 4, 300, 300, 64), (1, 2, 700, 700, 128)]),
    ],
)
def test_causal_fp32_matches_reference(b, h, tq, tk, d):
    q, k, v, do = _inputs(b, h, tq, tk, d)
    _check_against_reference(q, k, v, do, **FP32_TOL)


@pytest.mark.parametrize("tq,tk", [(1, 37), (5, 70), (33, 64)])
def test_kv_cache_shapes(tq, tk):
    """Fewer queries than keys: queries are aligned to the newest keys."""
    q, k, v, do = _inputs(2, 2, tq, tk, 32)
    _check_against_reference(q, k, v, do, **FP32_TOL)


def test_non_causal_and_custom_scale():
    q, k, v, do = _inputs(2, 1, 21, 45, 16)
    _check_against_reference(q, k, v, do, causal=False, scale=0.3, **FP32_TOL)


def test_odd_head_dim():
    q, k, v, do = _inputs(1, 2, 19, 19, 24)
    _check_against_reference(q, k, v, do, **FP32_TOL)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, FP32_TOL), (torch.float16, FP16_TOL)])
def test_large_magnitudes(dtype, tol):
    """Scores in the thousands: the online softmax must not overflow."""
    q, k, v, do = _inputs(1, 2, 40, 40, 32, dtype=dtype, scale=100.0)
    if dtype == torch.float32:
        # Scores near 1e4 carry fp32 rounding near 1e-3, so probabilities recomputed in the
        # backward (a differently ordered dot) legitimately differ by that much, relatively.
        tol = dict(rtol=5e-3, atol=5e-3)
    _check_against_reference(q, k, v, do, **tol)


@pytest.mark.parametrize("b,h,tq,tk,d", [(2, 2, 70, 70, 32), (1, 2, 9, 40, 64), (1, 1, 1, 17, 16)])
def test_fp16_matches_reference(b, h, tq, tk, d):
    q, k, v, do = _inputs(b, h, tq, tk, d, dtype=torch.float16)
    _check_against_reference(q, k, v, do, **FP16_TOL)


def test_non_contiguous_inputs():
    """q, k, v as views of a packed (B, T, 3, H, D) projection, as a model produces them."""
    b, t, h, d = 2, 23, 2, 16
    gen = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, t, 3, h, d, generator=gen).to(DEVICE).requires_grad_()
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    do = torch.randn(b, h, t, d, generator=gen).to(DEVICE).transpose(2, 3).contiguous().transpose(2, 3)
    out = flash_attention(q, k, v)
    (grad,) = torch.autograd.grad(out, qkv, do)
    ref = attention_reference(q, k, v)
    (ref_grad,) = torch.autograd.grad(ref, qkv, do)
    _assert_close(out, ref, **FP32_TOL)
    _assert_close(grad, ref_grad, **FP32_TOL)


def test_mixed_dtypes_promote():
    q, k, v, do = _inputs(1, 1, 10, 10, 16)
    out = flash_attention(q.detach().half(), k.detach(), v.detach())
    assert out.dtype == torch.float32
    _assert_close(out, attention_reference(q.detach().half().float(), k.detach(), v.detach()), **FP32_TOL)


def test_autocast_casts_to_the_autocast_dtype():
    q, k, v, do = _inputs(1, 2, 18, 18, 32)
    with torch.autocast(DEVICE, dtype=torch.float16):
        out = flash_attention(q, k, v)
    assert out.dtype == torch.float16
    grads = torch.autograd.grad(out, (q, k, v), do.half())
    assert all(g.dtype == torch.float32 for g in grads)
    q16, k16, v16 = (t.detach().half().requires_grad_() for t in (q, k, v))
    ref = attention_reference(q16, k16, v16)
    ref_grads = torch.autograd.grad(ref, (q16, k16, v16), do.half())
    _assert_close(out, ref, **FP16_TOL)
    for g, r in zip(grads, ref_grads):
        _assert_close(g, r, **FP16_TOL)


# ------------------------------------------------------------------------------ padding and bands


def test_key_lengths_with_fully_masked_example():
    q, k, v, do = _inputs(3, 2, 33, 33, 16)
    key_lengths = torch.tensor([33, 0, 12], device=DEVICE)
    out, grads = _check_against_reference(q, k, v, do, key_lengths=key_lengths, **FP32_TOL)
    assert torch.count_nonzero(out[1]) == 0
    for g in grads:
        assert torch.isfinite(g).all()
        assert torch.count_nonzero(g[1]) == 0
    # Padded keys get no gradient; early queries of example 2 still see their keys.
    assert torch.count_nonzero(grads[1][2, :, 12:]) == 0 and torch.count_nonzero(grads[2][2, :, 12:]) == 0
    assert torch.count_nonzero(out[2, :, :12]) > 0


def test_key_lengths_with_kv_cache_and_window():
    q, k, v, do = _inputs(2, 2, 20, 50, 16)
    _check_against_reference(q, k, v, do, key_lengths=torch.tensor([41, 50], device=DEVICE), window=9, **FP32_TOL)


def test_padded_keys_are_never_read():
    """NaN in padding must not leak: the kernel masks padded keys at load time."""
    q, k, v, do = _inputs(2, 1, 30, 30, 16)
    key_lengths = torch.tensor([30, 17], device=DEVICE)
    with torch.no_grad():
        k[1, :, 17:] = float("nan")
        v[1, :, 17:] = float("nan")
    out, grads = _fwd_bwd(flash_attention, q, k, v, do, key_lengths=key_lengths)
    clean = [t.detach().nan_to_num(0.0).requires_grad_() for t in (q, k, v)]
    ref, ref_grads = _fwd_bwd(attention_reference, *clean, do, key_lengths=key_lengths)
    _assert_close(out, ref, **FP32_TOL)
    for g, r in zip(grads, ref_grads):
        _assert_close(g, r, **FP32_TOL)


@pytest.mark.parametrize("tq,tk,window", [(70, 70, 1), (70, 70, 20), (16, 64, 7), (1, 40, 5)])
def test_window_matches_masked_reference(tq, tk, window):
    q, k, v, do = _inputs(1, 2, tq, tk, 16)
    _check_against_reference(q, k, v, do, window=window, **FP32_TOL)


def test_window_skips_tiles_outside_the_band():
    """Keys far outside every query's band are poisoned with NaN: they must not be loaded at all."""
    q, k, v, do = _inputs(1, 1, 8, 300, 16)
    with torch.no_grad():
        # The band of the 8 newest queries starts at key 300 - 8 - 12 + 1; anything more than
        # one (at most 128-wide) tile before it lies in tiles the kernel must skip.
        k[..., :150, :] = float("nan")
        v[..., :150, :] = float("nan")
    out, grads = _fwd_bwd(flash_attention, q, k, v, do, window=12)
    clean = [t.detach().nan_to_num(0.0).requires_grad_() for t in (q, k, v)]
    ref, ref_grads = _fwd_bwd(attention_reference, *clean, do, window=12)
    _assert_close(out, ref, **FP32_TOL)
    for g, r in zip(grads, ref_grads):
        _assert_close(g, r, **FP32_TOL)


def test_causal_skips_tiles_above_the_diagonal():
    """NaN placed where only skipped tiles would read it must not reach the checked outputs."""
    if not triton_interpreting():
        pytest.skip("tile sizes are only fixed under the interpreter")
    blocks = attention_module.INTERPRET_BLOCKS
    ceil_to = lambda x, m: -(-x // m) * m  # noqa: E731
    t = 96
    # Queries of the first query block read keys below ceil(BLOCK_M / BLOCK_N) tiles only.
    first_rows = min(blocks["fwd"]["BLOCK_M"], blocks["dq"]["BLOCK_M"])
    poison_from = max(ceil_to(b["BLOCK_M"], b["BLOCK_N"]) for b in (blocks["fwd"], blocks["dq"]))
    q, k, v, do = _inputs(1, 1, t, t, 16)
    clean = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    with torch.no_grad():
        k[..., poison_from:, :] = float("nan")
        v[..., poison_from:, :] = float("nan")
    out, grads = _fwd_bwd(flash_attention, q, k, v, do)
    ref, ref_grads = _fwd_bwd(attention_reference, *clean, do)
    _assert_close(out[..., :first_rows, :], ref[..., :first_rows, :], **FP32_TOL)
    _assert_close(grads[0][..., :first_rows, :], ref_grads[0][..., :first_rows, :], **FP32_TOL)

    # dK/dV programs of key blocks past the first query tile must not read its queries.
    rows = blocks["dkdv"]["BLOCK_M"]
    keys_from = ceil_to(rows, blocks["dkdv"]["BLOCK_N"])
    q, k, v, do = _inputs(1, 1, t, t, 16)
    clean = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    poisoned_do = do.clone()
    with torch.no_grad():
        q[..., :rows, :] = float("nan")
        poisoned_do[..., :rows, :] = float("nan")
    _, grads = _fwd_bwd(flash_attention, q, k, v, poisoned_do)
    clean_do = do.clone()
    clean_do[..., :rows, :] = 0.0
    _, ref_grads = _fwd_bwd(attention_reference, *clean, clean_do)
    for g, r in zip(grads[1:], ref_grads[1:]):
        _assert_close(g[..., keys_from:, :], r[..., keys_from:, :], **FP32_TOL)


# ------------------------------------------------------------------------------ dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate_and_mask_match_the_helper(p):
    """With q = 0 every key gets probability 1/Tk and v = I exposes the kernel's mask in the output."""
    b, h, t = 2, 2, 64
    q = torch.zeros(b, h, t, t, device=DEVICE)
    k = torch.randn(b, h, t, t, device=DEVICE)
    v = torch.eye(t, device=DEVICE).expand(b, h, t, t).contiguous()
    out = flash_attention(q, k, v, causal=False, dropout_p=p, seed=1234)
    scaled = out * t * (1.0 - p)
    kept = scaled.round()
    assert (scaled - kept).abs().max() < 1e-4 and set(kept.unique().tolist()) <= {0.0, 1.0}
    drop_rate = 1.0 - kept.mean().item()
    assert abs(drop_rate - p) < (0.015 if p < 0.3 else 0.02), drop_rate
    mask = attention_keep_mask((b, h, t, t), p, 1234, device=DEVICE)
    assert torch.equal(kept.bool(), mask)
    # Each (batch, head) draws its own stream.
    flat = mask.reshape(b * h, t, t)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(b * h) for j in range(i))


def test_dropout_forward_and_backward_share_the_mask():
    q, k, v, do = _inputs(2, 1, 33, 40, 32)
    key_lengths = torch.tensor([40, 25], device=DEVICE)
    mask = attention_keep_mask((2, 1, 33, 40), 0.3, 77, device=DEVICE)
    assert 0.6 < mask.float().mean() < 0.8
    _check_against_reference(q, k, v, do, keep_mask=mask, dropout_p=0.3, seed=77, key_lengths=key_lengths, **FP32_TOL)


def test_dropout_fp16_with_window():
    q, k, v, do = _inputs(1, 2, 40, 40, 16, dtype=torch.float16)
    mask = attention_keep_mask((1, 2, 40, 40), 0.2, 5, device=DEVICE)
    _check_against_reference(q, k, v, do, keep_mask=mask, dropout_p=0.2, seed=5, window=10, **FP16_TOL)


def test_dropout_seeds():
    q, k, v, _ = _inputs(1, 2, 24, 24, 16)
    with torch.no_grad():
        a = flash_attention(q, k, v, dropout_p=0.5, seed=11)
        b = flash_attention(q, k, v, dropout_p=0.5, seed=torch.tensor(11))
        c = flash_attention(q, k, v, dropout_p=0.5, seed=12)
        torch.manual_seed(0)
        d = flash_attention(q, k, v, dropout_p=0.5)
        e = flash_attention(q, k, v, dropout_p=0.5)
        torch.manual_seed(0)
        f = flash_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(d, f) and not torch.equal(d, e)


def test_no_dropout_leaves_the_rng_alone():
    q, k, v, _ = _inputs(1, 1, 8, 8, 16)
    torch.manual_seed(0)
    with torch.no_grad():
        flash_attention(q, k, v, dropout_p=0.0)
    after = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(4))


# ------------------------------------------------------------------------------ determinism, compile


def test_backward_is_bit_identical():
    q, k, v, do = _inputs(2, 1, 45, 45, 32)
    kw = dict(dropout_p=0.2, seed=3, key_lengths=torch.tensor([45, 30], device=DEVICE))
    first = _fwd_bwd(flash_attention, q, k, v, do, **kw)
    second = _fwd_bwd(flash_attention, q, k, v, do, **kw)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[1], second[1]):
        assert torch.equal(a, b)


def test_torch_compile_matches_eager_without_recompiling_per_seed():
    q, k, v, do = _inputs(1, 2, 20, 20, 16)

    def attend(q, k, v, seed):
        return flash_attention(q, k, v, dropout_p=0.25, seed=seed, window=12)

    torch._dynamo.reset()
    compiled = torch.compile(attend, fullgraph=True)
    seed = torch.tensor([9])
    out, grads = _fwd_bwd(compiled, q, k, v, do, seed=seed)
    ref, ref_grads = _fwd_bwd(attend, q, k, v, do, seed=seed)
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)
    with torch._dynamo.config.patch(error_on_recompile=True):
        other = compiled(q, k, v, torch.tensor([10]))
    assert not torch.equal(other, out)
    torch._dynamo.reset()


def test_rejects_bad_arguments():
    q, k, v, _ = _inputs(1, 1, 4, 4, 16)
    with pytest.raises(ValueError):
        flash_attention(q, k, v, window=0)
    with pytest.raises(ValueError):
        flash_attention(q, k, v, dropout_p=1.0)
    with pytest.raises(ValueError):
        flash_attention(q, k[..., :8], v)
    with pytest.raises(ValueError):
        flash_attention(q, k, v, key_lengths=torch.tensor([1, 2], device=DEVICE))
    with pytest.raises(ValueError, match="scale"):
        flash_attention(q, k, v, scale=-0.5)


# ------------------------------------------------------------------------------ GPU readiness


def test_interior_tiles_never_read_past_the_end():
    """Rows past Tq / Tk hold NaN in memory: interior tiles load without masks, so they must
    be exactly the tiles that lie wholly inside."""
    b, h, d, pad = 1, 2, 16, 40

    def padded(t, length):
        base = torch.full((b, h, length + pad, d), float("nan"), device=t.device, dtype=t.dtype)
        base[:, :, :length] = t.detach()
        return base[:, :, :length].requires_grad_()

    cases = {(70, 70): ({}, {"window": 20}), (37, 90): ({},), (64, 64): ({"causal": False},)}
    for (tq, tk), kws in cases.items():
        q, k, v, do = _inputs(b, h, tq, tk, d, seed=tq)
        pq, pk, pv = padded(q, tq), padded(k, tk), padded(v, tk)
        base_do = torch.full((b, h, tq + pad, d), float("nan"), device=q.device)
        base_do[:, :, :tq] = do
        pdo = base_do[:, :, :tq]
        for kw in kws:
            out, grads = _fwd_bwd(flash_attention, pq, pk, pv, pdo, **kw)
            ref, ref_grads = _fwd_bwd(attention_reference, q, k, v, do, **kw)
            _assert_close(out, ref, **FP32_TOL, name=f"out {tq}x{tk} {kw}")
            for name, g, r in zip(("dq", "dk", "dv"), grads, ref_grads):
                _assert_close(g, r, **FP32_TOL, name=f"{name} {tq}x{tk} {kw}")


def test_backward_casts_grad_out_to_the_inputs_dtype(monkeypatch):
    """An fp32 upstream gradient for fp16 inputs reaches the kernels as fp16 (their dots need one
    operand dtype) and gives the gradients of the pre-cast one."""
    q, k, v, do = _inputs(1, 2, 24, 24, 16, dtype=torch.float16)
    out, lse = torch.ops.gpt1.flash_attention_fwd(q.detach(), k.detach(), v.detach(), None, None, True, None,
                                                  0.25, 0.0)
    seen = []
    real_launch = attention_module._launch

    def spy(kernel, tuned, which, rows, block_key, bh, args, meta, pairs):
        seen.append(args[3].dtype)  # grad_out follows q, k, v in both backward kernels
        return real_launch(kernel, tuned, which, rows, block_key, bh, args, meta, pairs)

    monkeypatch.setattr(attention_module, "_launch", spy)
    grads32 = torch.ops.gpt1.flash_attention_bwd(do.float(), q.detach(), k.detach(), v.detach(), out, lse, None,
                                                 None, True, None, 0.25, 0.0)
    grads16 = torch.ops.gpt1.flash_attention_bwd(do, q.detach(), k.detach(), v.detach(), out, lse, None, None,
                                                 True, None, 0.25, 0.0)
    assert seen == [torch.float16] * 4
    for a, b in zip(grads32, grads16):
        assert a.dtype == torch.float16 and torch.equal(a, b)


def test_seeds_are_masked_to_31_bits():
    for raw in (-1, -(2**32), 2**40 + 3, -(2**63)):
        value = attention_module.seed_value(torch.tensor([raw]))
        assert 0 <= value < 2**31 and value == raw & 0x7FFFFFFF
    assert attention_module.seed_value(attention_module._seed_tensor(-5)) == (-5) & 0x7FFFFFFF


def test_negative_seeds_keep_heads_apart():
    """Unmasked, seed -2**32 would give head 1 the Philox key of head 0 under seed 0."""
    shape, p = (2, 2, 24, 24), 0.5
    for seed in (torch.tensor(-(2**32)), torch.tensor(-1), -77):
        mask = attention_keep_mask(shape, p, seed, device=DEVICE)
        flat = mask.reshape(4, 24, 24)
        assert all(not torch.equal(flat[i], flat[j]) for i in range(4) for j in range(i))
    zero = attention_keep_mask(shape, p, 0, device=DEVICE)
    shifted = attention_keep_mask(shape, p, torch.tensor(-(2**32)), device=DEVICE)
    assert not torch.equal(shifted[0, 1], zero[0, 0])


def test_negative_seed_forward_and_backward_share_the_mask():
    q, k, v, do = _inputs(1, 2, 33, 33, 16)
    seed = torch.tensor([-123456789])
    mask = attention_keep_mask((1, 2, 33, 33), 0.25, seed, device=DEVICE)
    _check_against_reference(q, k, v, do, keep_mask=mask, dropout_p=0.25, seed=seed, **FP32_TOL)


@pytest.mark.parametrize("t", [32, 37])
def test_forward_and_dkdv_masks_are_the_helpers_bit_for_bit(t):
    """q = 0 makes every probability 1/t; v = I exposes the forward's mask in the output and
    dO = I exposes the dK/dV kernel's mask in dV (both times t * (1 - p))."""
    b, h, p = 1, 3, 0.3
    q = torch.zeros(b, h, t, t, device=DEVICE, requires_grad=True)
    k = torch.randn(b, h, t, t, device=DEVICE, requires_grad=True)
    eye = torch.eye(t, device=DEVICE).expand(b, h, t, t).contiguous()
    v = eye.clone().requires_grad_()
    out = flash_attention(q, k, v, causal=False, dropout_p=p, seed=-9)
    (dv,) = torch.autograd.grad(out, (v,), eye)
    mask = attention_keep_mask((b, h, t, t), p, -9, device=DEVICE)
    from_out = out.detach() * t * (1.0 - p)
    from_dv = dv.transpose(-1, -2) * t * (1.0 - p)
    for exposed in (from_out, from_dv):
        assert (exposed - exposed.round()).abs().max() < 1e-4
        assert torch.equal(exposed.round().bool(), mask)


def _philox4x32(key_lo, key_hi, c0, c1, c2, c3, rounds=10):
    """Philox4x32 (Salmon et al., SC'11) on numpy uint64 arrays holding 32-bit values."""
    m32 = np.uint64(0xFFFFFFFF)
    mul_a, mul_b = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    bump_a, bump_b = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    k0, k1 = np.uint64(key_lo), np.uint64(key_hi)
    for _ in range(rounds):
        prod_b, prod_a = mul_b * c2, mul_a * c0
        c0, c1, c2, c3 = ((prod_b >> np.uint64(32)) ^ c1 ^ k0, prod_b & m32,
                          (prod_a >> np.uint64(32)) ^ c3 ^ k1, prod_a & m32)
        k0, k1 = (k0 + bump_a) & m32, (k1 + bump_b) & m32
    return c0, c1, c2, c3


def test_keep_mask_layout_matches_an_independent_philox():
    """Key (31-bit seed, batch*head); counter (key // 4, query); key 4g + j uses output j."""
    b, h, tq, tk, p, seed = 1, 2, 5, 11, 0.5, -3
    mask = attention_keep_mask((b, h, tq, tk), p, seed, device=DEVICE).cpu()
    rows = np.arange(tq, dtype=np.uint64)[:, None] + np.zeros((1, tk), dtype=np.uint64)
    cols = np.zeros((tq, 1), dtype=np.uint64) + np.arange(tk, dtype=np.uint64)[None, :]
    zero = np.zeros_like(rows)
    threshold = attention_module.dropout_threshold(p)
    for head in range(h):
        outs = _philox4x32(seed & 0x7FFFFFFF, head, cols // np.uint64(4), rows, zero, zero)
        bits = np.choose((cols % np.uint64(4)).astype(np.int64), outs)
        expected = (bits >> np.uint64(1)) >= np.uint64(threshold)
        assert torch.equal(mask[0, head], torch.from_numpy(expected)), head


def test_launch_grid_puts_batch_heads_on_axis_0():
    """Axis 0 takes 2**31 - 1 programs, axis 1 only 65535: batch * heads goes on axis 0."""
    grid = attention_module.launch_grid
    assert grid(70000, 1024, 64) == (70000, 16)
    assert grid(2**31 - 1, 1, 16) == (2**31 - 1, 1)
    with pytest.raises(ValueError, match="batch \\* heads"):
        grid(2**31, 64, 64)
    with pytest.raises(ValueError, match="65535"):
        grid(8, 65535 * 16 + 1, 16)
    assert grid(8, 65535 * 16, 16) == (8, 65535)


@pytest.mark.parametrize("which", ["fwd", "dq", "dkdv"])
def test_fixed_configs_are_pruned_like_tuned_ones(which):
    budget = attention_module._SMEM_BUDGET
    for elem in (2, 4):
        for d in (16, 24, 64, 100, 128, 256):
            first = attention_module.fixed_candidates(which, d, elem)[0]
            assert attention_module.smem_estimate(which, first, d, elem) <= budget, (which, elem, d)
    # fp32 at head dim 256: the first fixed config (64 x 64, two stages) does not fit.
    big = attention_module._FIXED[which][0]
    assert attention_module.smem_estimate(which, big, 256, 4) > budget
    assert big not in attention_module.fixed_candidates(which, 256, 4)


def test_prune_configs_keeps_order_and_falls_back_to_the_smallest(monkeypatch):
    configs = attention_module._FIXED["fwd"]
    assert attention_module.prune_configs("fwd", configs, 64, 2) == configs
    monkeypatch.setattr(attention_module, "_SMEM_BUDGET", 1)
    (only,) = attention_module.prune_configs("fwd", configs, 64, 2)
    assert only.kwargs == {"BLOCK_M": 32, "BLOCK_N": 32} and only.num_stages == 1


def test_fixed_launch_falls_back_when_out_of_shared_memory(monkeypatch):
    """The estimate is coarse: a config the GPU refuses is skipped, and the one that worked is remembered."""
    tried = []

    class FakeKernel:
        def __getitem__(self, grid):
            def run(*args, BLOCK_M, BLOCK_N, num_warps, num_stages, **meta):
                tried.append((grid, BLOCK_M, BLOCK_N))
                if (BLOCK_M, BLOCK_N) == (64, 64):
                    raise attention_module.OutOfResources(300000, 232448, "shared memory")
            return run

    monkeypatch.setattr(attention_module, "_FIXED_CHOICE", {})
    q = torch.empty(1, 1, 1, 64, dtype=torch.float16)
    meta = {"HEAD_DIM": 64, "CAUSAL": True}
    for _ in range(2):
        attention_module._launch_fixed(FakeKernel(), "fwd", 300, "BLOCK_M", 6, (q,), meta)
    assert tried == [((6, 5), 64, 64), ((6, 5), 64, 32), ((6, 5), 64, 32)]


def test_deterministic_mode_pins_the_fixed_config(monkeypatch):
    big = 4096 * 4096
    monkeypatch.delenv("GPT1_ATTENTION_AUTOTUNE", raising=False)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    assert attention_module.use_fixed_config(100) and not attention_module.use_fixed_config(big)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert attention_module.use_fixed_config(big)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    monkeypatch.setenv("GPT1_ATTENTION_AUTOTUNE", "0")
    assert attention_module.use_fixed_config(big)


# ------------------------------------------------------------------------------ GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_gpt1_shape_matches_reference(dtype):
    q, k, v, do = _inputs(4, 12, 1024, 1024, 64, dtype=dtype, device="cuda")
    _check_against_reference(q, k, v, do, **GPU_TOL[dtype])


@pytest.mark.gpu
def test_gpu_long_sequence_fwd_bwd():
    q, k, v, do = _inputs(2, 4, 2048, 2048, 64, dtype=torch.bfloat16, device="cuda")
    _check_against_reference(q, k, v, do, **GPU_TOL[torch.bfloat16])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [128, 256])
def test_gpu_large_head_dims(dtype, d):
    q, k, v, do = _inputs(2, 2, 300, 300, d, dtype=dtype, device="cuda")
    tol = GPU_TOL[dtype] if dtype == torch.bfloat16 else dict(rtol=1e-3, atol=1e-3)
    _check_against_reference(q, k, v, do, **tol)


@pytest.mark.gpu
def test_gpu_masks_dropout_and_kv_cache():
    q, k, v, do = _inputs(3, 4, 200, 333, 64, dtype=torch.bfloat16, device="cuda")
    key_lengths = torch.tensor([333, 0, 150], device="cuda")
    mask = attention_keep_mask((3, 4, 200, 333), 0.1, 42, device="cuda")
    out, grads = _check_against_reference(
        q, k, v, do, **GPU_TOL[torch.bfloat16], keep_mask=mask, dropout_p=0.1, seed=42,
        key_lengths=key_lengths, window=96,
    )
    assert torch.count_nonzero(out[1]) == 0 and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.gpu
def test_gpu_backward_deterministic_and_autocast():
    q, k, v, do = _inputs(2, 12, 512, 512, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        first = _fwd_bwd(flash_attention, q, k, v, do.bfloat16(), dropout_p=0.1, seed=1)
        second = _fwd_bwd(flash_attention, q, k, v, do.bfloat16(), dropout_p=0.1, seed=1)
    assert first[0].dtype == torch.bfloat16
    for a, b in zip((first[0], *first[1]), (second[0], *second[1])):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_torch_compile():
    q, k, v, do = _inputs(2, 4, 256, 256, 64, dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(lambda q, k, v: flash_attention(q, k, v), fullgraph=True)
    out, grads = _fwd_bwd(compiled, q, k, v, do)
    ref, ref_grads = _fwd_bwd(flash_attention, q, k, v, do)
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


@pytest.mark.gpu
def test_gpu_window_cost_grows_with_t_times_w():
    """Doubling T at a fixed window should roughly double the time, not quadruple it."""
    from triton.testing import do_bench

    def run(t):
        q, k, v, _ = _inputs(1, 8, t, t, 64, dtype=torch.bfloat16, device="cuda")
        with torch.no_grad():
            return do_bench(lambda: flash_attention(q, k, v, window=256))

    t_small, t_large = run(4096), run(8192)
    assert t_large < 3.0 * t_small, (t_small, t_large)
    q, k, v, _ = _inputs(1, 8, 8192, 8192, 64, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        t_full = do_bench(lambda: flash_attention(q, k, v))
    assert t_large < 0.5 * t_full, (t_large, t_full)


@pytest.mark.slow
def test_kernels_compile_for_hopper_in_bf16():
    """bf16 never runs under the interpreter (its tl.dot is wrong there): compile the three
    kernels for sm_90 with dropout, a window and key padding, and check their shared memory."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    script = Path(__file__).with_name("compile_for_gpu.py")
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(script), "--dtype", "bf16", "--arch", "90"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("no ptxas in this Triton install")
    assert proc.returncode == 0, proc.stderr[-3000:]
    kernels = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {k["kernel"] for k in kernels} == {"fwd", "dkdv", "dq"}
    assert all(0 < k["shared"] <= attention_module._SMEM_BUDGET for k in kernels), kernels
