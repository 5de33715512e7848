"""Eager calls run the kernels' code directly, not through their torch.library custom ops.

The ops stay for torch.compile (the ``*compile*`` tests of each kernel's module compare the two
paths); here every op is replaced by one that fails, and eager calls must still match the
references, values and gradients.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import gpt1_kernels.attention as attention_module  # noqa: E402
import gpt1_kernels.cross_entropy as ce_module  # noqa: E402
import gpt1_kernels.layernorm as layernorm_module  # noqa: E402
from gpt1_kernels import eager, reference  # noqa: E402
from tolerances import KERNEL_DEVICE  # noqa: E402

OPS = {
    attention_module: ("_flash_attention_fwd", "_flash_attention_bwd"),
    layernorm_module: ("_add_ln_fwd", "_add_ln_bwd"),
    ce_module: ("_ce_fwd", "_ce_bwd", "_lce_fwd"),
}


@pytest.fixture
def ops_fail(monkeypatch):
    """Every kernel op raises when called."""

    def fail(*args, **kwargs):
        raise AssertionError("the torch.library op was called on the eager path")

    for module, names in OPS.items():
        for name in names:
            monkeypatch.setattr(module, name, fail)


def _leaves(*shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(KERNEL_DEVICE, dtype).requires_grad_() for shape in shapes]


def _assert_matches(fused, ref, leaves, rtol=1e-5, atol=1e-5):
    """Values, and gradients of ``leaves`` for a seeded upstream gradient, agree."""
    torch.testing.assert_close(fused, ref, rtol=rtol, atol=atol)
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)).to(ref.device, ref.dtype)
    grads = torch.autograd.grad(fused, leaves, upstream)
    ref_grads = torch.autograd.grad(ref, leaves, upstream)
    for g, e in zip(grads, ref_grads):
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol)


def test_attention_forward_and_backward_skip_the_ops(ops_fail):
    q, k, v = _leaves((2, 2, 40, 16), (2, 2, 40, 16), (2, 2, 40, 16))
    key_lengths = torch.tensor([40, 23], device=KERNEL_DEVICE)
    kw = dict(key_lengths=key_lengths, window=24)
    _assert_matches(attention_module.flash_attention(q, k, v, **kw), reference.attention_reference(q, k, v, **kw),
                    (q, k, v))
    with torch.no_grad():
        out = attention_module.flash_attention(q, k, v)
    assert out.grad_fn is None
    torch.testing.assert_close(out, reference.attention_reference(q, k, v).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("return_sum", [False, True])
def test_add_layer_norm_skips_the_ops(ops_fail, return_sum):
    x, r, w, b = _leaves((3, 5, 48), (3, 5, 48), (48,), (48,))
    got = layernorm_module.add_layer_norm(x, r, w, b, return_sum=return_sum)
    want = reference.add_layer_norm_reference(x, r, w, b, return_sum=return_sum)
    if return_sum:
        torch.testing.assert_close(got[1], want[1])
        # Only the sum is used: the normalised output's gradient is absent, not zero-filled.
        _assert_matches(got[1] * 3.0, want[1] * 3.0, (x, r))
        got, want = layernorm_module.add_layer_norm(x, r, w, b, return_sum=True)[0], want[0]
    _assert_matches(got, want, (x, r, w, b))


def test_cross_entropies_skip_the_ops(ops_fail):
    (logits,) = _leaves((6, 2, 90))
    targets = torch.randint(0, 90, (6, 2), generator=torch.Generator().manual_seed(1)).to(KERNEL_DEVICE)
    targets[0, 1] = -100
    for reduction in ("mean", "sum", "none"):
        got = ce_module.cross_entropy(logits, targets, reduction=reduction)
        want = reference.cross_entropy_reference(logits.reshape(-1, 90), targets.reshape(-1), reduction=reduction)
        _assert_matches(got, want.view(got.shape), (logits,))
    hidden, weight = _leaves((12, 16), (90, 16), seed=2)
    got = ce_module.linear_cross_entropy(hidden, weight, targets.reshape(-1), chunk_size=5)
    want = reference.linear_cross_entropy_reference(hidden, weight, targets.reshape(-1))
    _assert_matches(got, want, (hidden, weight))


def test_gradients_of_gradients_fail_as_on_the_op_path():
    """``create_graph=True`` sends the backward through the op, which has no double backward."""
    q, k, v = _leaves((1, 1, 8, 16), (1, 1, 8, 16), (1, 1, 8, 16))
    (dq,) = torch.autograd.grad(attention_module.flash_attention(q, k, v).sum(), q, create_graph=True)
    assert dq.requires_grad
    with pytest.raises(RuntimeError, match="no autograd formula"):
        torch.autograd.grad(dq.sum(), q)


# ----------------------------------------------------------------------------- the choice itself


class _Recorder:
    """Stands for an op, an autograd.Function and an implementation; records which ran."""

    def __init__(self):
        self.calls = []

    def op(self, *args):
        self.calls.append("op")

    def apply(self, *args):
        self.calls.append("function")

    def impl(self, *args):
        self.calls.append("impl")


class _Traced(torch.Tensor):
    """Stands for a tracer's fake or functional tensor."""


@pytest.mark.parametrize("case, expected", [
    ("no grad needed", "impl"),
    ("grad needed", "function"),
    ("grad needed, grad mode off", "impl"),
    ("parameter", "function"),
    ("tensor subclass", "op"),
])
def test_call_chooses_the_path(case, expected):
    plain, leaf = torch.ones(2), torch.ones(2, requires_grad=True)
    inputs = {
        "no grad needed": (plain, None),
        "grad needed": (plain, leaf),
        "grad needed, grad mode off": (plain, leaf),
        "parameter": (torch.nn.Parameter(torch.ones(2)),),
        "tensor subclass": (plain, leaf.detach().as_subclass(_Traced)),
    }[case]
    recorder = _Recorder()
    with torch.set_grad_enabled(case != "grad needed, grad mode off"):
        eager.call(recorder.op, recorder, recorder.impl, (), inputs)
    assert recorder.calls == [expected]


def test_call_uses_the_op_under_torch_compile():
    recorder = _Recorder()
    torch._dynamo.reset()

    @torch.compile(backend="eager", fullgraph=False)
    def compiled(x):
        eager.call(recorder.op, recorder, recorder.impl, (), (x,))
        return x + 1

    compiled(torch.ones(2))
    torch._dynamo.reset()
    assert recorder.calls == ["op"]
