"""Host-side helpers shared by the kernel wrappers, kept cheap: they run on every call."""

from __future__ import annotations

import contextlib

import torch

from .availability import triton_interpreting

# Read once, as Triton did when it decorated the kernels (interpreted or compiled).
INTERPRETING = triton_interpreting()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)``. (``triton.cdiv`` is a constexpr function, several times slower on the host.)"""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= n`` (0 for 0), as ``triton.next_power_of_2``."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, without the call (a microsecond or more) when ``t`` has that dtype already."""
    return t if t.dtype == dtype else t.to(dtype)


def on_device(t: torch.Tensor):
    """Makes ``t``'s GPU the current one for a launch (Triton launches on the current device);
    a no-op context when it is already current, which is the usual case and much cheaper."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()
