"""What a pre-training run will cost before anything is allocated: parameters, FLOPs, memory.

The memory estimate is deliberately simple (and on the high side), so an impossible run is
refused in a second with the figure instead of growing until the machine kills it:

* weights, gradients and AdamW's two moments: 16 bytes per parameter (fp32), split over the
  processes under FSDP;
* activations kept for the backward pass, per token of a micro-batch:
  ``n_layer x (4 x (12 x d_model + 3 x d_ff) + 16 x d_model [dropout masks, when dropout > 0]
  + 16 x n_head x n_ctx [CPU only, with attention dropout or banded layers: PyTorch's CPU
  attention then keeps the score matrix]) + 12 x vocab_size [the logits, their softmax and
  gradient, unless the fused Triton loss runs]`` bytes;
* the sampled windows (int64) and, when a checkpoint is written, a serialised copy of the
  weights and optimiser state: the peak is ``max(16 N + activations, 24 N)``.

The constants were fitted to measured peak RSS on CPU (within about 15% from 0.1M to 14M
parameters); bf16 autocast on CUDA needs less than this fp32 figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..config import ModelConfig, count_parameters
from ..model import ops

GIB = 1024**3


def flops_per_token(config: ModelConfig) -> float:
    """Training FLOPs per token: 6 x parameters + 12 x layers x d_model x context (as the benchmarks)."""
    return 6.0 * count_parameters(config) + 12.0 * config.n_layer * config.d_model * config.n_ctx


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one process needs, by part."""

    parameters: int
    state: int  # weights, gradients, AdamW moments
    activations: int  # one micro-batch's saved activations
    data: int  # sampled windows
    checkpoint: int  # peak while a checkpoint is serialised

    @property
    def total(self) -> int:
        return max(self.state + self.activations + self.data, self.checkpoint)


def estimate_memory(config: ModelConfig, *, micro_batch: int, global_batch: int, device: torch.device,
                    shards: int = 1) -> MemoryEstimate:
    """The memory estimate of the module docstring for one process (``shards`` > 1 under FSDP)."""
    n = count_parameters(config)
    d, layers, t = config.d_model, config.n_layer, config.n_ctx
    fused = ops.use_triton(torch.empty(0, device=device))
    per_layer = 4 * (12 * d + 3 * config.d_ff)
    if config.dropout > 0:
        per_layer += 16 * d
    if device.type == "cpu" and (config.attn_dropout > 0 or config.attention == "alternating"):
        per_layer += 16 * config.n_head * t
    per_token = layers * per_layer + (0 if fused else 12 * config.vocab_size)
    tokens = micro_batch * t
    return MemoryEstimate(
        parameters=n,
        state=16 * n // max(1, shards),
        activations=tokens * per_token,
        data=8 * global_batch + 2 * 8 * micro_batch * (t + 1),
        checkpoint=24 * n,
    )


def available_memory(device: torch.device) -> int | None:
    """Bytes free for this process on ``device`` (None when unknown).

    On the CPU: the kernel's MemAvailable, or less when a cgroup (a container, a Slurm job)
    limits this process's memory.
    """
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    figures = [figure for figure in (_meminfo_available(), _cgroup_headroom()) if figure is not None]
    if not figures:
        try:
            figures.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return min(figures)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _stat_value(path: str, key: str) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_headroom() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, then v1); None when unlimited or unknown.

    Usage counts the page cache; its inactive part is reclaimable, so it is not counted as used.
    """
    for base, limit_name, usage_name, cache_key in (
        ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
        ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    ):
        limit, usage = _read_int(f"{base}/{limit_name}"), _read_int(f"{base}/{usage_name}")
        if limit is not None and usage is not None and limit < 2**60:  # v1 reports "no limit" as a huge number
            return max(0, limit - usage + _stat_value(f"{base}/memory.stat", cache_key))
    return None


def processes_per_machine() -> int:
    """Processes of this job sharing the machine's memory (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def human_bytes(count: float) -> str:
    """``1.5 GiB``-style text."""
    for unit, size in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{int(count)} B"
