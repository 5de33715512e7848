"""Device choice, mixed precision and seeding, shared by every command that runs the model."""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import re
from typing import Iterator

import numpy as np
import torch

from .errors import Gpt1Error

DEVICES = ("auto", "cpu", "cuda")  # and cuda:N, one GPU by its index
DEVICE_HELP = "auto (CUDA when available), cpu, cuda, or cuda:N (GPU N; under torchrun each process takes its LOCAL_RANK's)."
_DEVICE = re.compile(r"(auto|cpu|cuda)(:(0|[1-9][0-9]{0,3}))?")


def device_rule(value, name: str):
    """Rule: a device name (auto, cpu, cuda or cuda:N); whether it is present is checked when the run starts."""
    match = _DEVICE.fullmatch(value) if isinstance(value, str) else None
    if match is None or (match.group(2) and match.group(1) != "cuda"):
        raise Gpt1Error(f"{name} must be auto, cpu, cuda or cuda:N (N the index of a GPU), not {value!r}")
    return value


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; ``cuda:N`` is GPU N, which also becomes the
    current CUDA device (kernels launch on the current device). Changes no other global setting
    (see :func:`fast_matmul`).

    Under torchrun (WORLD_SIZE > 1) each process takes the GPU of its LOCAL_RANK, so a ``cuda:N``
    naming one GPU for every process is refused. Also resolves the kernel path (``GPT1_KERNELS``),
    so a bad setting fails here, before any work."""
    device_rule(name, "--device")
    kind, _, index = name.partition(":")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise Gpt1Error(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu")
    if index:
        if _world_size() > 1:
            raise Gpt1Error(f"--device {name} names one GPU, but under torchrun each process uses the GPU of its "
                            "LOCAL_RANK: pass --device cuda (choose the GPUs with CUDA_VISIBLE_DEVICES)")
        count = torch.cuda.device_count()
        if int(index) >= count:
            visible = f"cuda:0 to cuda:{count - 1}" if count > 1 else "cuda:0"
            raise Gpt1Error(f"--device {name}: only {count} CUDA GPU{'s are' if count > 1 else ' is'} visible "
                            f"({visible})")
    from .model import ops

    ops.kernel_path()
    if index:
        torch.cuda.set_device(int(index))
        return torch.device("cuda", int(index))
    return torch.device(kind)


def _world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


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


# ---------------------------------------------------------------------------------------------
# Precision

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
PRECISION_HELP = "auto, bf16, fp16 (autocast with a loss scaler) or fp32."
PRECISION_DEFAULT = "bf16 on CUDA when supported, else fp32"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_AMBIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("gpt1_precision", default=None)


def precision_rule(value, name: str):
    """Rule: one of :data:`PRECISIONS`."""
    if value not in PRECISIONS:
        raise Gpt1Error(f"{name} must be one of {', '.join(PRECISIONS)}, not {value!r}")
    return value


def resolve_precision(name: str | None, device: torch.device) -> str:
    """bf16, fp16 or fp32 for ``--precision name`` on ``device`` (None or auto: bf16 on a CUDA GPU
    that supports it, else fp32). bf16 and fp16 autocast also run on the CPU (slowly)."""
    device = torch.device(device)
    if name is not None:
        precision_rule(name, "--precision")
    if name in (None, "auto"):
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if device.type not in ("cuda", "cpu") and name != "fp32":
        raise Gpt1Error(f"--precision {name} is not available on {device.type}; use --precision fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise Gpt1Error("--precision bf16: this GPU does not support bfloat16; use --precision fp16 or fp32")
    return name


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Inside the block, :func:`autocast` without a precision uses ``precision`` (a training run's
    evaluation and its task kind's loss compute as the run does)."""
    token = _AMBIENT.set(precision)
    try:
        yield
    finally:
        _AMBIENT.reset(token)


def autocast(device: torch.device, precision: str | None = None):
    """Autocast for ``precision`` (bf16, fp16; fp32: none). Without one: the enclosing
    :func:`precision_scope`'s, else bf16 on CUDA and full fp32 on the CPU."""
    device = torch.device(device)
    precision = precision or _AMBIENT.get()
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler fp16 needs (None for bf16 and fp32)."""
    return torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None


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
