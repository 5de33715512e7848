"""Where the kernel tests run and how close to the references they must come.

``KERNEL_DEVICE`` is CUDA (compiled kernels) when a GPU is visible and the interpreter is off,
else the CPU (interpreted kernels); tests size their problems with :func:`sized`. Tolerances
are ``(rtol, atol)`` per kernel family, device type and dtype; each test module's own
``assert_close`` says how ``atol`` scales with the expected values. bf16 has no CPU entries:
``tl.dot`` on bf16 is wrong under the interpreter of Triton 3.9, so bf16 is tested on GPUs.
"""

from __future__ import annotations

import torch

from gpt1_kernels.availability import kernel_device

KERNEL_DEVICE = kernel_device()
ON_CUDA = KERNEL_DEVICE.type == "cuda"

_F32, _F16, _BF16 = torch.float32, torch.float16, torch.bfloat16

TOLERANCES = {
    # atol is a fraction of max(|expected|, 0.1); sums run over the key length.
    "attention": {
        "cpu": {_F32: (1e-5, 1e-5), _F16: (1e-2, 5e-3)},
        "cuda": {_F32: (2e-5, 2e-5), _F16: (1e-2, 1e-2), _BF16: (2e-2, 2e-2)},
    },
    # atol is a fraction of max(|expected|, 1): LayerNorm outputs are O(1).
    "layernorm": {
        "cpu": {_F32: (1e-5, 1e-5), _F16: (2e-3, 2e-3), _BF16: (1.6e-2, 1.6e-2)},
        "cuda": {_F32: (1e-5, 1e-5), _F16: (2e-3, 2e-3), _BF16: (1.6e-2, 1.6e-2)},
    },
    # atol is a fraction of max|expected|.
    "cross_entropy": {
        "cpu": {_F32: (1e-5, 1e-5), _F16: (2e-3, 2e-3), _BF16: (1.6e-2, 1.6e-2)},
        "cuda": {_F32: (2e-5, 2e-5), _F16: (2e-3, 2e-3), _BF16: (1.6e-2, 1.6e-2)},
    },
    # Whole-model losses and gradients, Triton path against the torch path, fp32.
    "model": {
        "cpu": {_F32: (1e-4, 1e-5)},
        "cuda": {_F32: (5e-4, 5e-5)},
    },
}


def tolerance(family: str, dtype: torch.dtype, device: torch.device | str = KERNEL_DEVICE) -> tuple[float, float]:
    """``(rtol, atol)`` for ``family`` at ``dtype`` on ``device``."""
    return TOLERANCES[family][torch.device(device).type][dtype]


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, family: str, dtype: torch.dtype, what: str = "",
                        *, scale_floor: float = 0.0, atol_floor: float = 0.0) -> None:
    """Same dtype and shape, and equal to ``tolerance(family, dtype)``: ``rtol``, and ``atol`` as a
    fraction of ``max(max|expected|, scale_floor)`` plus ``atol_floor``."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    rtol, atol = tolerance(family, dtype, actual.device)
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * max(scale, scale_floor) + atol_floor,
                               msg=lambda m: f"{what}: {m}")


def sized(cpu, cuda):
    """``cuda`` when the kernels run compiled on a GPU (larger problems are cheap there), else ``cpu``."""
    return cuda if ON_CUDA else cpu
