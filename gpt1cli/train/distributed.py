"""Data parallelism through torchrun: DDP or FSDP2, on PyTorch's own distributed engine.

``torchrun --nproc-per-node N -m gpt1cli pretrain ...`` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; :func:`distributed_session` reads them, initialises the
process group (NCCL on CUDA, gloo on CPU) with a timeout, and always tears it down. Without
torchrun every helper here degrades to a single process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import Gpt1Error
from ..runtime import fast_matmul, pick_device

PARALLEL_MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The torchrun environment (a single process when absent)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise Gpt1Error("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None


@contextlib.contextmanager
def distributed_session(device_name: str, timeout_s: float = 600.0) -> Iterator[tuple[World, torch.device]]:
    """Join the process group for the block's duration; pick this rank's device."""
    world = world_from_env()
    if world.distributed and device_name in ("auto", "cuda") and torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
        device = pick_device("cuda")
        device = torch.device("cuda", world.local_rank)
    else:
        device = pick_device(device_name)
    with fast_matmul(device):  # TF32 for training, restored when the session ends
        if not world.distributed or dist.is_initialized():
            yield world, device
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        try:
            yield world, device
        finally:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def wrap_model(model: nn.Module, mode: str, world: World, device: torch.device) -> nn.Module:
    """DDP (replicated) or FSDP2 (each block sharded, bf16 compute on CUDA); identity for one process."""
    if mode not in PARALLEL_MODES:
        raise Gpt1Error(f"--parallel must be ddp or fsdp, not {mode!r}")
    if not world.distributed:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else MixedPrecisionPolicy()
    for module in model.modules():
        if type(module).__name__ == "Block":
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def gradient_sync(model: nn.Module, enabled: bool):
    """A context in which this micro-step's backward does (or does not) reduce gradients."""
    if not enabled and hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def all_reduce_mean(value: float, world: World, device: torch.device) -> float:
    """The mean of a number over all ranks."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor) / world.world_size


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (so all ranks stop at the same step)."""
    if not world.distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def full_model_state(model: nn.Module, *, every_rank: bool = False) -> dict:
    """Gather the full (unsharded) weights, keyed by parameter name: on rank 0 only, in CPU memory,
    or with ``every_rank`` on every rank, on its device. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not every_rank))

