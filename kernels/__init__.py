"""Fused Triton kernels for the GPT-1 toolkit (imported as ``gpt1_kernels``).

Each kernel lives in its own module and is tested against the PyTorch reference in
:mod:`gpt1_kernels.reference`. Its forward (and backward, where it has one) are ``torch.library``
custom ops with registered autograd, which ``torch.compile`` traces as opaque ops; eager calls run
the same code through an ``autograd.Function`` instead, which costs far less host time per call
(:mod:`gpt1_kernels.eager`).
This package knows nothing of the CLI; :mod:`gpt1cli.model.ops` chooses between the
Triton kernels and the references at run time.
"""

from .availability import kernel_device, triton_available, triton_interpreting

__all__ = ["kernel_device", "triton_available", "triton_interpreting"]
