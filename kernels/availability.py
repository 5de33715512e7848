"""Whether Triton can run here, checked once and without importing Triton eagerly."""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when the ``triton`` package imports (Linux wheels only)."""
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
    except Exception:  # a broken install must not break the CPU path
        return False
    return True


def triton_interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1``: kernels run on CPU tensors, slowly, for tests."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_device():
    """The device whose tensors the kernels take here: CUDA when a GPU is visible and the
    interpreter is off (compiled kernels), else the CPU (interpreted kernels)."""
    import torch

    if torch.cuda.is_available() and not triton_interpreting():
        return torch.device("cuda")
    return torch.device("cpu")
