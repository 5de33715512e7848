"""Fused Triton kernels for the GPT-1 toolkit (imported as ``gpt1_kernels``).

Each kernel lives in its own module with an ``autograd.Function`` and a ``torch.library``
custom op, and is tested against the PyTorch reference in :mod:`gpt1_kernels.reference`.
This package knows nothing of the CLI; :mod:`gpt1cli.model.ops` chooses between the
Triton kernels and the references at run time.
"""

from .availability import kernel_device, triton_available, triton_interpreting

__all__ = ["kernel_device", "triton_available", "triton_interpreting"]
