"""The fused cross-entropy kernels against the PyTorch references.

Tensors live on ``tolerances.KERNEL_DEVICE``. CPU runs go through the Triton interpreter, where
a row is read in blocks of 64 logits, so vocabularies of a few hundred already cover several
blocks and a masked tail. With a GPU the same tests run compiled; realistic shapes (4096
tokens, GPT vocabularies) and bf16 are in the ``gpu`` tests.
"""

from __future__ import annotations

import pytest
import torch

import gpt1_kernels.cross_entropy as ce_module
from gpt1_kernels.cross_entropy import cross_entropy, default_chunk_size, linear_cross_entropy
from gpt1_kernels.reference import cross_entropy_reference, linear_cross_entropy_reference
from kernel_checks import assert_bit_identical_runs, assert_compiled_matches_eager
from tolerances import KERNEL_DEVICE, assert_close_scaled

IGNORE = -100
DEVICE = KERNEL_DEVICE


def assert_close(actual, expected, dtype, what=""):
    """rtol, and atol as a fraction of the largest expected magnitude."""
    assert_close_scaled(actual, expected, "cross_entropy", dtype, what, atol_floor=1e-12)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def make_targets(n, vocab, *, ignored=(), seed=0, device=DEVICE):
    targets = torch.randint(0, vocab, (n,), generator=gen(seed))
    # always exercise the first and last vocabulary entries
    if n > 2:
        targets[0], targets[-1] = 0, vocab - 1
    for i in ignored:
        targets[i] = IGNORE
    return targets.to(device)


def upstream_for(loss, seed=7):
    """A non-trivial incoming gradient, so scaling by grad_output is checked too."""
    if loss.dim() == 0:
        return torch.tensor(0.75, device=loss.device)
    return torch.randn(loss.shape, generator=gen(seed)).to(loss.device)


# ============================================================================= cross_entropy


def check_ce(logits, targets, reduction, dtype):
    loss = cross_entropy(logits, targets, ignore_index=IGNORE, reduction=reduction)
    ref = cross_entropy_reference(logits, targets, ignore_index=IGNORE, reduction=reduction)
    # both compute the loss in fp32 from the very same logits
    assert_close(loss, ref, torch.float32, "loss")
    up = upstream_for(ref)
    (grad,) = torch.autograd.grad(loss, logits, up)
    (ref_grad,) = torch.autograd.grad(ref, logits, up)
    assert_close(grad, ref_grad, dtype, "dlogits")
    return loss, grad


def make_logits(shape, dtype, *, scale=3.0, offset=0.0, seed=1, device=DEVICE):
    logits = torch.randn(shape, generator=gen(seed)) * scale + offset
    return logits.to(device=device, dtype=dtype).requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ce_matches_reference(dtype, reduction):
    logits = make_logits((9, 200), dtype)
    targets = make_targets(9, 200, ignored=(2, 5))
    loss, grad = check_ce(logits, targets, reduction, dtype)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert torch.count_nonzero(grad[2]) == 0 and torch.count_nonzero(grad[5]) == 0


@pytest.mark.parametrize("vocab", [5, 64, 333])
def test_ce_vocab_sizes(vocab):
    logits = make_logits((4, vocab), torch.float32, seed=vocab)
    check_ce(logits, make_targets(4, vocab), "mean", torch.float32)


@pytest.mark.parametrize(
    "scale,offset", [(100.0, 0.0), (1.0, 1e4), (1.0, -1e4)], ids=["x100", "plus1e4", "minus1e4"]
)
def test_ce_large_magnitudes(scale, offset):
    logits = make_logits((6, 150), torch.float32, scale=scale, offset=offset)
    check_ce(logits, make_targets(6, 150, ignored=(3,)), "none", torch.float32)


def test_ce_masked_vocabulary():
    """-inf logits, a whole first block of them in one row, give finite losses and zero grads there."""
    logits = make_logits((3, 200), torch.float32)
    with torch.no_grad():
        logits[0, :64] = float("-inf")
        logits[1, 150:] = float("-inf")
    targets = torch.tensor([100, 3, 199], device=DEVICE)
    loss, grad = check_ce(logits, targets, "none", torch.float32)
    assert torch.isfinite(loss).all()
    assert torch.count_nonzero(grad[0, :64]) == 0 and torch.count_nonzero(grad[1, 150:]) == 0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ce_all_ignored(reduction):
    logits = make_logits((5, 70), torch.float32)
    targets = torch.full((5,), IGNORE, device=DEVICE)
    loss, grad = check_ce(logits, targets, reduction, torch.float32)
    assert torch.count_nonzero(loss) == 0
    assert torch.count_nonzero(grad) == 0


def test_ce_single_row_and_custom_ignore_index():
    logits = make_logits((1, 90), torch.float16)
    loss = cross_entropy(logits, torch.tensor([7], device=DEVICE), ignore_index=7)
    assert loss.item() == 0.0
    check_ce(logits, torch.tensor([89], device=DEVICE), "sum", torch.float16)


def test_ce_batched_and_strided():
    base = make_logits((2, 4, 160), torch.float32).detach()
    logits = base[..., :130].requires_grad_()  # row stride 160, not 130
    targets = make_targets(8, 130, ignored=(1,)).view(2, 4)
    loss = cross_entropy(logits, targets, reduction="none")
    assert loss.shape == (2, 4)
    # the reference (F.cross_entropy) wants classes in dim 1, so it sees the flattened rows
    ref = cross_entropy_reference(logits.reshape(8, 130), targets.reshape(8), reduction="none")
    assert_close(loss.reshape(8), ref, torch.float32, "loss")
    up = upstream_for(ref)
    (grad,) = torch.autograd.grad(loss, logits, up.view(2, 4))
    (ref_grad,) = torch.autograd.grad(ref, logits, up)
    assert_close(grad, ref_grad, torch.float32, "dlogits")


def test_ce_backward_is_deterministic():
    logits = make_logits((11, 140), torch.float32)
    targets = make_targets(11, 140, ignored=(4,))
    assert_bit_identical_runs(lambda: torch.autograd.grad(cross_entropy(logits, targets), logits))


def _ce_compiled_matches_eager(device, backend):
    logits = make_logits((6, 100), torch.float32, device=device)
    targets = make_targets(6, 100, ignored=(1,), device=device)

    def head(logits, targets):
        return cross_entropy(logits * 1.5, targets) + 0.5 * cross_entropy(logits, targets, reduction="none").max()

    assert_compiled_matches_eager(head, (logits, targets), (logits,), backend, loss_tol=(1e-6, 1e-6),
                                  grad_tol=(1e-6, 1e-7))


def test_ce_torch_compile_fullgraph():
    # aot_eager runs the fake impls and registered autograd as inductor would, without
    # inductor's CPU C++ build; the GPU test compiles with inductor.
    torch._dynamo.reset()
    _ce_compiled_matches_eager(DEVICE, "aot_eager")


def test_ce_rejects_bad_arguments():
    logits = torch.zeros(3, 10)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, torch.zeros(3, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match="shape"):
        cross_entropy(logits, torch.zeros(4, dtype=torch.long))


# ============================================================================= linear_cross_entropy


def make_head(n, dim, vocab, dtype, *, scale=1.0, seed=3, device=DEVICE):
    hidden = (torch.randn(n, dim, generator=gen(seed)) * scale).to(device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(vocab, dim, generator=gen(seed + 1)) * 0.3).to(device=device, dtype=dtype).requires_grad_()
    return hidden, weight


def check_lce(hidden, weight, targets, reduction, dtype, *, chunk_size=None):
    loss = linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE, reduction=reduction, chunk_size=chunk_size)
    ref = linear_cross_entropy_reference(hidden, weight, targets, ignore_index=IGNORE, reduction=reduction)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert_close(loss, ref, torch.float32 if dtype == torch.float32 else dtype, "loss")
    up = upstream_for(ref)
    grads = torch.autograd.grad(loss, (hidden, weight), up)
    ref_grads = torch.autograd.grad(ref, (hidden, weight), up)
    for name, g, e in zip(("dhidden", "dweight"), grads, ref_grads):
        assert_close(g, e, dtype, name)
    return loss, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunk_size", [4, None], ids=["chunk4", "default"])
def test_lce_matches_reference(dtype, reduction, chunk_size):
    # 13 tokens in chunks of 4: the last chunk holds one token
    hidden, weight = make_head(13, 24, 150, dtype)
    targets = make_targets(13, 150, ignored=(2, 7))
    _, (dhidden, _) = check_lce(hidden, weight, targets, reduction, dtype, chunk_size=chunk_size)
    assert torch.count_nonzero(dhidden[2]) == 0 and torch.count_nonzero(dhidden[7]) == 0


@pytest.mark.parametrize("chunk_size", [1, 5, 13, 64])
def test_lce_chunk_boundaries(chunk_size):
    hidden, weight = make_head(13, 16, 100, torch.float32, seed=chunk_size)
    check_lce(hidden, weight, make_targets(13, 100, ignored=(12,)), "mean", torch.float32, chunk_size=chunk_size)


def test_lce_large_logits():
    """x100 hidden states: logits in the thousands, a near one-hot softmax."""
    hidden, weight = make_head(7, 16, 90, torch.float32, scale=100.0)
    check_lce(hidden, weight, make_targets(7, 90), "sum", torch.float32, chunk_size=3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_lce_all_ignored(reduction):
    hidden, weight = make_head(6, 16, 80, torch.float32)
    targets = torch.full((6,), IGNORE, device=DEVICE)
    loss, grads = check_lce(hidden, weight, targets, reduction, torch.float32, chunk_size=4)
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_lce_single_token_batched_input():
    hidden, weight = make_head(1, 16, 70, torch.float16)
    check_lce(hidden, weight, torch.tensor([69], device=DEVICE), "mean", torch.float16)
    hidden, weight = make_head(6, 16, 70, torch.float32)
    loss = linear_cross_entropy(hidden.view(2, 3, 16), weight, make_targets(6, 70).view(2, 3), chunk_size=4)
    ref = linear_cross_entropy_reference(hidden, weight, make_targets(6, 70))
    assert_close(loss, ref, torch.float32)
    (dh,) = torch.autograd.grad(loss, hidden)
    (ref_dh,) = torch.autograd.grad(ref, hidden)
    assert_close(dh, ref_dh, torch.float32)


def test_lce_partial_requires_grad_and_no_grad():
    hidden, weight = make_head(9, 16, 70, torch.float32)
    targets = make_targets(9, 70, ignored=(0,))
    ref = linear_cross_entropy_reference(hidden, weight, targets)
    ref_dh, ref_dw = torch.autograd.grad(ref, (hidden, weight))

    frozen = weight.detach()
    (dh,) = torch.autograd.grad(linear_cross_entropy(hidden, frozen, targets, chunk_size=4), hidden)
    assert_close(dh, ref_dh, torch.float32, "dhidden")
    (dw,) = torch.autograd.grad(linear_cross_entropy(hidden.detach(), weight, targets, chunk_size=4), weight)
    assert_close(dw, ref_dw, torch.float32, "dweight")
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, chunk_size=4)
    assert not loss.requires_grad
    assert_close(loss, ref.detach(), torch.float32, "loss")


def test_lce_autocast_matches_reference():
    """fp32 parameters under bf16 autocast: bf16 matmuls, fp32 loss, fp32 gradients."""
    hidden, weight = make_head(10, 32, 120, torch.float32)
    targets = make_targets(10, 120, ignored=(4,))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, chunk_size=4)
        ref = linear_cross_entropy_reference(hidden, weight, targets)
    assert loss.dtype == torch.float32
    assert_close(loss, ref, torch.bfloat16, "loss")
    grads = torch.autograd.grad(loss, (hidden, weight))
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    for name, g, e in zip(("dhidden", "dweight"), grads, ref_grads):
        assert g.dtype == torch.float32
        assert_close(g, e, torch.bfloat16, name)


def test_lce_backward_is_deterministic():
    hidden, weight = make_head(11, 16, 100, torch.float32)
    targets = make_targets(11, 100, ignored=(3,))
    assert_bit_identical_runs(
        lambda: torch.autograd.grad(linear_cross_entropy(hidden, weight, targets, chunk_size=4), (hidden, weight))
    )


def _lce_compiled_matches_eager(device, backend, n=14, dim=16, vocab=100, chunk_size=5):
    hidden, weight = make_head(n, dim, vocab, torch.float32, device=device)
    targets = make_targets(n, vocab, ignored=(2,), device=device).view(2, n // 2)

    def lm_loss(hidden, weight, targets):
        h = torch.tanh(hidden).view(2, n // 2, dim)
        return linear_cross_entropy(h, weight, targets, chunk_size=chunk_size) * 2.0

    assert_compiled_matches_eager(lm_loss, (hidden, weight, targets), (hidden, weight), backend,
                                  loss_tol=(1e-6, 1e-6), grad_tol=(1e-5, 1e-6))


def test_lce_torch_compile_fullgraph():
    torch._dynamo.reset()
    _lce_compiled_matches_eager(DEVICE, "aot_eager")


def test_lce_rejects_bad_arguments():
    hidden, weight = make_head(4, 8, 20, torch.float32)
    targets = make_targets(4, 20)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(hidden, weight, targets, reduction="none")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(hidden, weight[:, :4], targets)


def test_default_chunk_size_bounds_logits_memory():
    cuda = torch.device("cuda")  # only inspected, never allocated on
    for vocab, dtype in [(40478, torch.bfloat16), (50257, torch.float32), (50257, torch.bfloat16)]:
        rows = default_chunk_size(4096, vocab, dtype, cuda)
        logits_bytes = rows * vocab * torch.empty((), dtype=dtype).element_size()
        assert 128 <= rows <= 4096 and logits_bytes <= 256 * 2**20
        assert logits_bytes < 4096 * vocab * 4 / 2  # well under eager's fp32 logits
    # 2560 rows fit the budget; two equal chunks of 2048 beat 2560 + 1536
    assert default_chunk_size(4096, 50257, torch.bfloat16, cuda) == 2048
    assert default_chunk_size(3, 50257, torch.float32, cuda) == 3
    assert default_chunk_size(0, 100, torch.float32, torch.device("cpu")) == 1
    rows = default_chunk_size(1000, 5000, torch.float32, torch.device("cpu"))
    assert 1 <= rows and rows * 5000 * 4 <= 256 * 1024


def test_default_chunk_size_follows_the_budget():
    cuda = torch.device("cuda")
    rows = default_chunk_size(4096, 50257, torch.bfloat16, cuda, budget_bytes=64 * 2**20)
    # 640 rows fit 64 MiB: seven equal chunks of 586 rather than six of 640 and one of 256
    assert rows == 586 and rows * 50257 * 2 <= 64 * 2**20
    assert default_chunk_size(100, 1000, torch.float32, cuda, budget_bytes=1) == 1
    rows = default_chunk_size(10_000, 1000, torch.float16, torch.device("cpu"), budget_bytes=2**20)
    assert rows * 1000 * 2 <= 2**20


def _rare_class_head(n, device=DEVICE):
    """fp16 head where the last class has probability ~1e-6 on every token and is never the
    target, so its weight gradient is made only of terms of size p / n (mean reduction)."""
    g = gen(11)
    hidden = torch.randn(n, 8, generator=g)
    hidden[:, 0] = 1.0
    weight = torch.randn(16, 8, generator=g) * 0.5
    weight[-1, 0] = -11.0
    targets = torch.randint(0, 15, (n,), generator=g).to(device)
    return hidden.to(device, torch.float16).requires_grad_(), weight.to(device, torch.float16).requires_grad_(), targets


@pytest.mark.parametrize("loss_scale", [2.0**15, 2.0**16])
def test_lce_fp16_mean_gradient_survives_a_loss_scale(loss_scale):
    """``p / n`` is ~1e-9 here, below fp16's smallest subnormal: it must not be stored in fp16
    before the (GradScaler-style) upstream scale is applied, and 2**16 itself overflows fp16."""
    hidden, weight, targets = _rare_class_head(256)
    loss = linear_cross_entropy(hidden, weight, targets)
    up = torch.tensor(loss_scale, device=DEVICE)
    dh, dw = torch.autograd.grad(loss, (hidden, weight), up)
    h32, w32 = (t.detach().float().requires_grad_() for t in (hidden, weight))
    ref = linear_cross_entropy_reference(h32, w32, targets)
    ref_dh, ref_dw = torch.autograd.grad(ref, (h32, w32), up)
    p_over_n = torch.softmax(h32 @ w32.t(), -1)[:, -1] / 256
    assert p_over_n.max() < 6e-8  # would flush to zero (or to one subnormal step) in fp16
    assert dh.dtype == dw.dtype == torch.float16
    assert torch.isfinite(dh).all() and torch.isfinite(dw).all()
    assert torch.count_nonzero(dw[-1]) == 8
    torch.testing.assert_close(dw[-1].float(), ref_dw[-1], rtol=2e-2, atol=0.0)
    assert_close(dw.float(), ref_dw, torch.float16, "dweight")
    assert_close(dh.float(), ref_dh, torch.float16, "dhidden")


def test_weight_grad_accumulates_in_place():
    gen_ = gen(5)
    acc = torch.randn(6, 4, generator=gen_).to(DEVICE)
    start, ptr = acc.clone(), acc.data_ptr()
    dlogits = torch.randn(3, 6, generator=gen_).to(DEVICE)
    h = torch.randn(3, 4, generator=gen_).to(DEVICE)
    ce_module._accumulate_weight_grad(acc, dlogits, h)
    assert acc.data_ptr() == ptr
    torch.testing.assert_close(acc, start + dlogits.t() @ h)
    half = dlogits.half(), h.half()
    ce_module._accumulate_weight_grad(acc, *half)
    torch.testing.assert_close(acc, start + dlogits.t() @ h + half[0].float().t() @ half[1].float(),
                               rtol=1e-3, atol=1e-3)


def test_upstream_gradient_of_one_is_not_multiplied():
    grad = torch.randn(5, 3)
    assert ce_module._times_upstream(grad, torch.tensor(1.0), torch.float32) is grad
    twice = ce_module._times_upstream(grad, torch.tensor(2.0), torch.float16)
    assert twice.dtype == torch.float16
    torch.testing.assert_close(twice, (grad * 2).half())

    class Traced(torch.Tensor):  # stands for fake / functional tensors under torch.compile
        pass

    assert not ce_module._known_one(torch.tensor(1.0).as_subclass(Traced))
    if torch.cuda.is_available():
        assert not ce_module._known_one(torch.tensor(1.0, device="cuda"))  # reading it would synchronise


# ============================================================================= GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [40478, 50257])
def test_gpu_ce_matches_reference(dtype, vocab):
    logits = make_logits((4096, vocab), dtype, device="cuda")
    targets = make_targets(4096, vocab, ignored=range(0, 4096, 97), device="cuda")
    for reduction in ("mean", "none"):
        check_ce(logits, targets, reduction, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [40478, 50257])
def test_gpu_lce_matches_reference(vocab):
    hidden, weight = make_head(4096, 768, vocab, torch.bfloat16, device="cuda")
    targets = make_targets(4096, vocab, ignored=range(0, 4096, 113), device="cuda")
    check_lce(hidden, weight, targets, "mean", torch.bfloat16)
    # fp32 with an explicit chunk that does not divide the tokens
    hidden, weight = make_head(1000, 256, vocab, torch.float32, device="cuda")
    check_lce(hidden, weight, targets[:1000], "sum", torch.float32, chunk_size=384)


@pytest.mark.gpu
def test_gpu_lce_autocast_matches_reference():
    hidden, weight = make_head(2048, 768, 50257, torch.float32, device="cuda")
    targets = make_targets(2048, 50257, ignored=(5, 6), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets)
        ref = linear_cross_entropy_reference(hidden, weight, targets)
    assert_close(loss, ref, torch.bfloat16, "loss")
    grads = torch.autograd.grad(loss, (hidden, weight))
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    for g, e in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        assert_close(g, e, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("vocab", [40478, 50257])
def test_gpu_lce_peak_memory_well_under_eager(vocab):
    hidden, weight = make_head(4096, 768, vocab, torch.bfloat16, device="cuda")
    targets = make_targets(4096, vocab, device="cuda")

    def peak_bytes(loss_fn):
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss_fn(hidden, weight, targets).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    fused = peak_bytes(linear_cross_entropy)
    eager = peak_bytes(linear_cross_entropy_reference)
    assert fused < 0.5 * eager, f"fused peak {fused / 2**20:.0f} MiB vs eager {eager / 2**20:.0f} MiB"


@pytest.mark.gpu
def test_gpu_lce_backward_is_deterministic():
    hidden, weight = make_head(4096, 768, 50257, torch.bfloat16, device="cuda")
    targets = make_targets(4096, 50257, device="cuda")
    assert_bit_identical_runs(
        lambda: torch.autograd.grad(linear_cross_entropy(hidden, weight, targets), (hidden, weight))
    )


@pytest.mark.gpu
def test_gpu_torch_compile_inductor():
    torch._dynamo.reset()
    _ce_compiled_matches_eager("cuda", "inductor")
    _lce_compiled_matches_eager("cuda", "inductor", n=512, dim=128, vocab=5000, chunk_size=200)


@pytest.mark.gpu
def test_gpu_lce_fp16_mean_over_32k_tokens_under_a_loss_scale():
    """32768 tokens, fp16, mean reduction, GradScaler's initial scale: (softmax - onehot) / N
    would underflow fp16 if stored before the scale."""
    n, dim, vocab = 32768, 256, 8192
    hidden, weight = make_head(n, dim, vocab, torch.float16, device="cuda")
    targets = make_targets(n, vocab, device="cuda")
    up = torch.tensor(2.0**16, device="cuda")
    dh, dw = torch.autograd.grad(linear_cross_entropy(hidden, weight, targets), (hidden, weight), up)
    h32, w32 = (t.detach().float().requires_grad_() for t in (hidden, weight))
    ref_dh, ref_dw = torch.autograd.grad(linear_cross_entropy_reference(h32, w32, targets), (h32, w32), up)
    assert torch.isfinite(dw).all() and torch.count_nonzero(dw.float().abs().sum(1)) == vocab
    assert_close(dw.float(), ref_dw, torch.float16, "dweight")
    assert_close(dh.float(), ref_dh, torch.float16, "dhidden")


@pytest.mark.gpu
def test_gpu_lce_weight_grad_needs_no_per_chunk_temporary():
    """bf16, many chunks: the peak is the logits chunk plus the fp32 gradients, with no
    vocab x dim fp32 temporary per chunk on top."""
    if not ce_module._fp32_addmm_in_place_works(torch.device("cuda")):
        pytest.skip(f"torch {torch.__version__} cannot addmm bf16 into an fp32 buffer in place")
    n, dim, vocab, chunk = 8192, 768, 50257, 1024
    hidden, weight = make_head(n, dim, vocab, torch.bfloat16, device="cuda")
    targets = make_targets(n, vocab, device="cuda")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    expected = chunk * vocab * 2 + vocab * dim * 4 + n * dim * 4
    assert peak < expected + vocab * dim * 2, (peak / 2**20, expected / 2**20)
    assert torch.isfinite(loss)
