"""Test-wide set-up.

Kernel tests run where the kernels would run in use: on CUDA tensors (compiled Triton) when a
GPU is visible, otherwise on CPU tensors under the Triton interpreter. ``TRITON_INTERPRET`` is
read when a kernel is decorated, so it is set here, before any test module imports Triton;
``KERNEL_DEVICE`` (and the ``kernel_device`` fixture) says which device the kernel tests use.
The ops interface resolves its kernel path once per process, so it is reset around each test.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gpt1_kernels.availability import kernel_device as _kernel_device  # noqa: E402  (after the env is set)

KERNEL_DEVICE = _kernel_device()


@pytest.fixture
def kernel_device() -> torch.device:
    """The device kernel tests put their tensors on (see the module docstring)."""
    return KERNEL_DEVICE


@pytest.fixture(autouse=True)
def _fresh_kernel_path():
    from gpt1cli.model import ops

    ops.reset_kernel_path()
    yield
    ops.reset_kernel_path()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
