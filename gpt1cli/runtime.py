"""Device choice, mixed precision and seeding, shared by every command that runs the model."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from .errors import Gpt1Error

DEVICES = ("auto", "cpu", "cuda")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name not in DEVICES:
        raise Gpt1Error(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise Gpt1Error("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full fp32 on CPU (where bf16 matmuls are slower, not faster)."""
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
