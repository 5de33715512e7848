"""Device choice, mixed precision and seeding, shared by every command that runs the model."""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

from .errors import Gpt1Error

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU. Changes no global setting (see :func:`fast_matmul`).

    Also resolves the kernel path (``GPT1_KERNELS``), so a bad setting fails here, before any work."""
    if name not in DEVICES:
        raise Gpt1Error(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise Gpt1Error("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    from .model import ops

    ops.kernel_path()
    return torch.device(name)


@contextlib.contextmanager
def fast_matmul(device: torch.device | str) -> Iterator[None]:
    """TF32 for fp32 matmuls and cuDNN convolutions on CUDA for the block; the previous settings
    are restored on exit, even on an exception. Does nothing for other devices."""
    if torch.device(device).type != "cuda":
        yield
        return
    precision = torch.get_float32_matmul_precision()
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    if precision == "highest":  # "medium" already allows more than TF32: leave it
        torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_seed(seed: int, rank: int, step: int) -> int:
    """A well-mixed 63-bit seed for (run seed, process rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread inside the block: tiny CPU ops gain nothing from torch's thread pool,
    and on a shared machine waking it only adds noise and oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
