"""Which path a kernel call takes: its ``torch.library`` op, or the same code called directly.

Each kernel is a ``torch.library`` custom op with registered autograd, so that
``torch.compile`` (and export) sees one opaque, differentiable op. Going through that op
costs hundreds of microseconds of Python per forward and backward, more than the kernels
themselves take at small and medium shapes. Eager calls on plain tensors therefore run the
op's implementation directly, through an ``autograd.Function`` when a gradient is needed.
"""

from __future__ import annotations

import torch

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def custom_op(name: str, impl, schema: str):
    """``impl`` as the op ``gpt1::<name>``, which mutates none of its arguments. ``schema``
    gives its arguments and results, e.g. ``"(Tensor x, float eps) -> (Tensor, Tensor)"``."""
    return torch.library.custom_op(f"gpt1::{name}", impl, mutates_args=(), schema=schema)


def call(op, function, impl, args: tuple, inputs: tuple):
    """``op(*args)`` under ``torch.compile`` or for tensor subclasses (a tracer's fake or
    functional tensors); otherwise ``function.apply(*args)`` when one of the tensors ``inputs``
    (``None`` allowed) needs a gradient, else ``impl(*args)``. All three return the same."""
    if torch.compiler.is_compiling():
        return op(*args)
    grad = False
    for tensor in inputs:
        if tensor is not None:
            if type(tensor) not in _PLAIN:
                return op(*args)
            grad = grad or tensor.requires_grad
    if grad and torch.is_grad_enabled():
        return function.apply(*args)
    return impl(*args)


def backward_path(op, impl):
    """What a backward pass calls: ``impl``, or ``op`` when the pass records a graph
    (``create_graph=True``), so that differentiating the gradients fails as on the op path."""
    return op if torch.is_grad_enabled() else impl


def autograd_function(name: str, impl, setup_context, backward, differentiable_outputs: int = 1) -> type:
    """The eager twin of an op registered with ``register_autograd(backward, setup_context=...)``:
    an ``autograd.Function`` that runs ``impl`` and the same ``setup_context``, then ``backward``.

    Only the first ``differentiable_outputs`` outputs carry gradients (the rest are saved
    statistics), and an unused output's gradient reaches ``backward`` as ``None`` rather than
    as a zero-filled tensor.
    """

    def forward(ctx, *inputs):
        output = impl(*inputs)
        setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(*output[differentiable_outputs:])
        ctx.set_materialize_grads(False)
        return output

    return type(name, (torch.autograd.Function,), {
        "__doc__": f"The eager path of {name}: its op's code, without torch.library's dispatch.",
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
    })
