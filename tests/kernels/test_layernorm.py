"""The fused residual-add + LayerNorm kernel against the PyTorch reference.

Tensors live on ``tolerances.KERNEL_DEVICE``: CPU runs go through the Triton interpreter (set
up in ``tests/conftest.py``), so shapes stay small; with a GPU the same tests run compiled, and
realistic shapes and bf16 are in the ``gpu`` tests.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt1_kernels.layernorm import MAX_FEATURES, add_layer_norm
from gpt1_kernels.reference import add_layer_norm_reference
from kernel_checks import assert_bit_identical_runs, assert_compiled_matches_eager
from tolerances import KERNEL_DEVICE, assert_close_scaled, sized

DEVICE = KERNEL_DEVICE


def assert_close(actual, expected, dtype, what=""):
    """rtol, and atol as a fraction of the largest expected magnitude floored at 1 (LayerNorm values are O(1))."""
    assert_close_scaled(actual, expected, "layernorm", dtype, what, scale_floor=1.0)


def make_inputs(shape, dtype, *, residual=True, bias=True, param_dtype=None, offset=0.0, scale=1.0, seed=0,
                device=DEVICE):
    gen = torch.Generator().manual_seed(seed)
    n_cols = shape[-1]
    param_dtype = param_dtype or dtype

    def leaf(t, dt):
        return t.to(device=device, dtype=dt).requires_grad_()

    x = leaf(torch.randn(shape, generator=gen) * scale + offset, dtype)
    r = leaf(torch.randn(shape, generator=gen), dtype) if residual else None
    w = leaf(1.0 + 0.5 * torch.randn(n_cols, generator=gen), param_dtype)
    b = leaf(0.2 * torch.randn(n_cols, generator=gen), param_dtype) if bias else None
    return x, r, w, b


def check_against_reference(x, r, w, b, *, return_sum, dtype, eps=1e-5, seed=1):
    """Values and gradients of every input match the reference; returns the fused grads."""
    got = add_layer_norm(x, r, w, b, eps=eps, return_sum=return_sum)
    want = add_layer_norm_reference(x, r, w, b, eps=eps, return_sum=return_sum)
    got = got if return_sum else (got,)
    want = want if return_sum else (want,)
    for name, g, e in zip(("out", "sum"), got, want):
        assert_close(g, e, dtype, name)
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(e.shape, generator=gen).to(device=e.device, dtype=e.dtype) for e in want]
    names = [n for n, t in zip(("x", "residual", "weight", "bias"), (x, r, w, b)) if t is not None]
    leaves = [t for t in (x, r, w, b) if t is not None]
    grads = torch.autograd.grad(got, leaves, upstream)
    ref_grads = torch.autograd.grad(want, leaves, upstream)
    for name, g, e in zip(names, grads, ref_grads):
        assert_close(g, e, dtype, f"d{name}")
    return grads


CONFIGS = [
    # residual, bias, return_sum
    (True, True, False),
    (True, True, True),
    (False, True, False),
    (True, False, True),
    (False, False, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("residual,bias,return_sum", CONFIGS)
def test_matches_reference(dtype, residual, bias, return_sum):
    x, r, w, b = make_inputs((2, 5, 200), dtype, residual=residual, bias=bias)
    check_against_reference(x, r, w, b, return_sum=return_sum, dtype=dtype)


@pytest.mark.parametrize("n_cols", [1, 7, 128, 768, 1000, *sized([], [4096, 16384])])
def test_feature_sizes(n_cols):
    x, r, w, b = make_inputs((sized(4, 300), n_cols), torch.float32, seed=n_cols)
    check_against_reference(x, r, w, b, return_sum=True, dtype=torch.float32)


def test_single_row_fp16_params_fp32():
    x, r, w, b = make_inputs((1, 96), torch.float16, param_dtype=torch.float32)
    grads = check_against_reference(x, r, w, b, return_sum=False, dtype=torch.float16)
    assert grads[2].dtype == torch.float32 and grads[3].dtype == torch.float32


def test_large_offset_matches_float64():
    """A 1e4 offset on unit-scale rows: the kernel stays at float64 accuracy (torch's fp32 does not)."""
    x, r, w, b = make_inputs((6, 300), torch.float32, offset=1e4)
    out = add_layer_norm(x, r, w, b)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    grads = torch.autograd.grad(out, (x, r, w, b), upstream)

    summed = (x + r).detach().double().requires_grad_()  # the same fp32-rounded sum
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    exact = F.layer_norm(summed, (300,), w64, b64, 1e-5)
    ds, dw, db = torch.autograd.grad(exact, (summed, w64, b64), upstream.double())
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=2e-5)
    for got, want in zip(grads, (ds, ds, dw, db)):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5 * want.abs().max().item())
    # and it agrees with the fp32 reference to within that reference's own rounding
    ref = add_layer_norm_reference(x, r, w, b)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_large_scale(dtype):
    x, r, w, b = make_inputs((3, 257), dtype, scale=100.0)
    check_against_reference(x, r, w, b, return_sum=True, dtype=dtype)


def test_fp16_sum_is_rounded_before_normalising():
    """Statistics are those of the fp16 sum an unfused ``x + residual`` produces.

    With x near 100 (fp16 step 0.0625) a residual of ~0.03 mostly rounds away; normalising
    the exact fp32 sum instead would move outputs by a few percent.
    """
    x, r, w, b = make_inputs((4, 160), torch.float16, param_dtype=torch.float32, offset=100.0)
    with torch.no_grad():
        r.mul_(0.03)
    check_against_reference(x, r, w, b, return_sum=True, dtype=torch.float16)
    out, summed = add_layer_norm(x, r, w, b, return_sum=True)
    assert_close(out, add_layer_norm_reference(summed, None, w, b), torch.float16, "LN of the returned sum")


def test_constant_rows():
    """Zero variance: the output is the bias, with no NaN, in values or gradients."""
    x, r, w, b = make_inputs((3, 64), torch.float32)
    with torch.no_grad():
        x.copy_(torch.arange(3.0).view(3, 1).expand(3, 64) * 7.0)
        r.zero_()
    grads = check_against_reference(x, r, w, b, return_sum=False, dtype=torch.float32)
    out = add_layer_norm(x, r, w, b)
    torch.testing.assert_close(out, b.detach().expand(3, 64), rtol=0, atol=1e-6)
    assert all(torch.isfinite(g).all() for g in grads)


def test_strided_rows_and_three_dims():
    base = torch.randn(6, 160, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    x = base[:, :100].requires_grad_()  # row stride 160, not 100
    assert not x.is_contiguous()
    _, r, w, b = make_inputs((6, 100), torch.float32)
    check_against_reference(x, r, w, b, return_sum=True, dtype=torch.float32)


@pytest.mark.parametrize("use_out", [False, True])
def test_only_one_output_used(use_out):
    x, r, w, b = make_inputs((3, 48), torch.float32)
    out, summed = add_layer_norm(x, r, w, b, return_sum=True)
    ref_out, ref_sum = add_layer_norm_reference(x, r, w, b, return_sum=True)
    weights = torch.linspace(-1, 1, 48, device=DEVICE)
    # An unused output gets no gradient at all (not a zero one) from autograd.
    loss = (out * weights).sum() if use_out else (summed * weights).sum()
    ref_loss = (ref_out * weights).sum() if use_out else (ref_sum * weights).sum()
    grads = torch.autograd.grad(loss, (x, r, w, b))
    # Without the normalised output the reference never touches weight and bias.
    ref_grads = torch.autograd.grad(ref_loss, (x, r, w, b), allow_unused=True, materialize_grads=True)
    for g, e in zip(grads, ref_grads):
        assert_close(g, e, torch.float32)


def test_empty_input():
    x, r, w, b = make_inputs((0, 32), torch.float32)
    out = add_layer_norm(x, r, w, b)
    assert out.shape == (0, 32)
    dx, dr, dw, db = torch.autograd.grad(out.sum(), (x, r, w, b))
    assert dx.shape == (0, 32) and dr.shape == (0, 32)
    assert torch.equal(dw, torch.zeros(32, device=DEVICE)) and torch.equal(db, torch.zeros(32, device=DEVICE))


def test_backward_is_deterministic():
    x, r, w, b = make_inputs((37, 130), torch.float32)
    upstream = torch.randn(37, 130, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    assert_bit_identical_runs(lambda: torch.autograd.grad(add_layer_norm(x, r, w, b), (x, r, w, b), upstream))


def test_autocast_matches_reference():
    """Under autocast the dtypes and values follow the reference: bf16 x, fp32 residual and params."""
    x, _, w, b = make_inputs((4, 80), torch.bfloat16, param_dtype=torch.float32)
    _, r, _, _ = make_inputs((4, 80), torch.float32, seed=2)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out, summed = add_layer_norm(x, r, w, b, return_sum=True)
        ref_out, ref_sum = add_layer_norm_reference(x, r, w, b, return_sum=True)
    assert out.dtype == torch.bfloat16 and summed.dtype == torch.float32
    assert_close(out, ref_out, torch.bfloat16, "out")
    assert_close(summed, ref_sum, torch.float32, "sum")
    upstream = (torch.randn(4, 80).to(DEVICE, torch.bfloat16), torch.randn(4, 80).to(DEVICE))
    grads = torch.autograd.grad((out, summed), (x, r, w, b), upstream)
    ref_grads = torch.autograd.grad((ref_out, ref_sum), (x, r, w, b), upstream)
    for g, e in zip(grads, ref_grads):
        assert_close(g, e, torch.bfloat16)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32, torch.float32]


def _compiled_matches_eager(device, backend):
    x, r, w, b = make_inputs((2, 3, 96), torch.float32, device=device)

    def block(x, r, w, b):
        out, summed = add_layer_norm(x * 2.0, r, w, b, return_sum=True)
        return (out * summed).sum() + out.square().mean()

    assert_compiled_matches_eager(block, (x, r, w, b), (x, r, w, b), backend, loss_tol=(1e-5, 1e-5),
                                  grad_tol=(1e-5, 1e-5))


def test_torch_compile_fullgraph():
    # aot_eager traces the op through its fake impl and registered autograd like inductor
    # does, without inductor's CPU C++ build (tens of seconds); the GPU test uses inductor.
    torch._dynamo.reset()
    _compiled_matches_eager(DEVICE, "aot_eager")


def test_rejects_bad_shapes():
    x, r, w, b = make_inputs((2, 16), torch.float32)
    with pytest.raises(ValueError):
        add_layer_norm(x, r, w[:8], b)
    with pytest.raises(ValueError):
        add_layer_norm(x, r[:1], w, b)
    wide = torch.zeros(1, MAX_FEATURES + 1)
    with pytest.raises(ValueError, match="at most"):
        add_layer_norm(wide, None, torch.ones(MAX_FEATURES + 1), None)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,n_cols", [(4096, 768), (1024, 4096), (256, 8192), (300, 1000)])
def test_gpu_matches_reference(dtype, rows, n_cols):
    x, r, w, b = make_inputs((rows, n_cols), dtype, param_dtype=torch.float32, device="cuda")
    check_against_reference(x, r, w, b, return_sum=True, dtype=dtype)
    x, _, w, b = make_inputs((rows, n_cols), dtype, residual=False, device="cuda", seed=4)
    check_against_reference(x, None, w, b, return_sum=False, dtype=dtype)


@pytest.mark.gpu
def test_gpu_backward_is_deterministic():
    x, r, w, b = make_inputs((8192, 768), torch.bfloat16, param_dtype=torch.float32, device="cuda")
    upstream = torch.randn(8192, 768, device="cuda", dtype=torch.bfloat16)
    assert_bit_identical_runs(lambda: torch.autograd.grad(add_layer_norm(x, r, w, b), (x, r, w, b), upstream))


@pytest.mark.gpu
def test_gpu_autocast_matches_reference():
    x, r, w, b = make_inputs((512, 768), torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = x @ torch.eye(768, device="cuda")  # bf16 under autocast, as a projection's output
        out, summed = add_layer_norm(h, r, w, b, return_sum=True)
        ref_out, ref_sum = add_layer_norm_reference(h, r, w, b, return_sum=True)
    assert out.dtype == ref_out.dtype == torch.bfloat16 and summed.dtype == ref_sum.dtype == torch.float32
    assert_close(out, ref_out, torch.bfloat16, "out")
    assert_close(summed, ref_sum, torch.float32, "sum")
    grads = torch.autograd.grad((out.float().square().sum() + summed.sum()), (x, r, w, b))
    ref_grads = torch.autograd.grad((ref_out.float().square().sum() + ref_sum.sum()), (x, r, w, b))
    for g, e in zip(grads, ref_grads):
        assert_close(g, e, torch.bfloat16)


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    torch._dynamo.reset()
    _compiled_matches_eager("cuda", "inductor")
