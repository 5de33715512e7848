"""Checks shared by the kernel tests: torch.compile against eager, and run-to-run determinism."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def assert_compiled_matches_eager(fn: Callable[..., torch.Tensor], args: Sequence, leaves: Sequence[torch.Tensor],
                                  backend: str, *, loss_tol: tuple[float, float],
                                  grad_tol: tuple[float, float]) -> None:
    """``torch.compile(fn, fullgraph=True)`` (the kernels' custom ops) gives the scalar loss and
    the gradients that ``fn`` gives eagerly (their autograd.Functions), to ``(rtol, atol)``."""
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, leaves)
    ref = fn(*args)
    ref_grads = torch.autograd.grad(ref, leaves)
    torch.testing.assert_close(loss, ref, rtol=loss_tol[0], atol=loss_tol[1])
    for g, e in zip(grads, ref_grads):
        torch.testing.assert_close(g, e, rtol=grad_tol[0], atol=grad_tol[1])


def assert_bit_identical_runs(run: Callable[[], Sequence[torch.Tensor]]) -> None:
    """Two calls of ``run`` return bit-identical tensors."""
    first, second = run(), run()
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
