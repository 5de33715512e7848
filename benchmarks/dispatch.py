"""Host-side cost per call of each kernel entry point: the Python path around the launches.

At small and medium shapes a kernel call can take longer on the host (argument checks,
allocation, autograd bookkeeping, Triton's launcher) than on the GPU, and then the GPU waits.
Each entry point (``flash_attention``, ``add_layer_norm``, ``cross_entropy``,
``linear_cross_entropy``) is timed per call, ``fwd`` (inputs without gradients) and
``fwd+bwd`` (``torch.autograd.grad`` of the output), next to the matching PyTorch built-in
on the same tensors (``torch``), which shows eager PyTorch's own floor:

* ``launches: no-op`` (any machine where Triton imports): tiny CPU tensors, and every Triton
  kernel of :mod:`gpt1_kernels` swapped for one whose launch does nothing (see
  :func:`no_op_launches`), so the time is the host path alone (our Python and torch's). The
  clock is the CPU time of the calling thread, with one intra-op thread, so that other load
  on a shared machine hardly counts.
* ``launches: real`` (CUDA only): the same tiny shapes on the GPU, compiled kernels; they are
  host-bound, so this adds Triton's own launch cost to the above.

A record is the section's ``dispatch`` list entry: ``op``, ``mode``, ``launches``, ``device``,
``dtype``, ``shape`` and ``impls`` (``ours``, ``torch``), each a timing record (see
:mod:`gpt1_benchmarks.harness`) whose samples are per-call means over ``calls`` calls, plus
``median_us``.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from gpt1cli.runtime import one_torch_thread

from .harness import Settings, guarded, summarize, synchronize

KERNEL_MODULES = ("gpt1_kernels.attention", "gpt1_kernels.layernorm", "gpt1_kernels.cross_entropy")
MODES = ("fwd", "fwd+bwd")


# ----------------------------------------------------------------------------- no-op launches


class _NoOpKernel:
    """Stands in for a Triton kernel or autotuner: ``kernel[grid](*args)`` does nothing."""

    @staticmethod
    def _launch(*args, **kwargs) -> None:
        return None

    def __getitem__(self, grid):
        return self._launch


@contextlib.contextmanager
def no_op_launches() -> Iterator[None]:
    """Within the block, every Triton kernel of the kernel modules launches as a no-op.

    Module globals are swapped, so the wrappers run unchanged (they look their kernels up at
    call time); outputs hold whatever ``torch.empty`` gave them."""
    from triton.runtime.jit import KernelInterface

    saved = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        for attr, value in list(vars(module).items()):
            if isinstance(value, KernelInterface):
                saved.append((module, attr, value))
                setattr(module, attr, _NoOpKernel())
    try:
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


# ----------------------------------------------------------------------------- entry points


@dataclass(frozen=True)
class Entry:
    """One entry point: its module in gpt1_kernels, its tiny inputs and the matching built-in."""

    name: str  # the function's name in its module
    module: str
    shape: dict
    # (device, dtype, grad) -> (args, leaves that get gradients, upstream gradient or None)
    inputs: Callable[[torch.device, torch.dtype, bool], tuple[tuple, list[torch.Tensor], torch.Tensor | None]]
    builtin: Callable[..., torch.Tensor]

    def ours(self) -> Callable[..., torch.Tensor]:
        """The entry point itself (importing its module imports Triton)."""
        return getattr(importlib.import_module(f"gpt1_kernels.{self.module}"), self.name)


def _attention_inputs(device, dtype, grad):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 64, generator=gen).to(device, dtype).requires_grad_(grad) for _ in range(3))
    return (q, k, v), [q, k, v], torch.ones_like(q)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _layernorm_inputs(device, dtype, grad):
    gen = torch.Generator().manual_seed(0)
    x, r = (torch.randn(16, 64, generator=gen).to(device, dtype).requires_grad_(grad) for _ in range(2))
    w = torch.ones(64, device=device, requires_grad=grad)
    b = torch.zeros(64, device=device, requires_grad=grad)
    return (x, r, w, b), [x, r, w, b], torch.ones_like(x)


def _builtin_add_layer_norm(x, r, w, b):
    return F.layer_norm(x + r, (x.shape[-1],), w.to(x.dtype), b.to(x.dtype))


def _cross_entropy_inputs(device, dtype, grad):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 64, generator=gen).to(device, dtype).requires_grad_(grad)
    targets = torch.randint(0, 64, (16,), generator=gen).to(device)
    return (logits, targets), [logits], None


def _builtin_cross_entropy(logits, targets):
    return F.cross_entropy(logits.float(), targets)


def _linear_cross_entropy_inputs(device, dtype, grad):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(16, 32, generator=gen).to(device, dtype).requires_grad_(grad)
    weight = (0.02 * torch.randn(64, 32, generator=gen)).to(device, dtype).requires_grad_(grad)
    targets = torch.randint(0, 64, (16,), generator=gen).to(device)
    return (hidden, weight, targets), [hidden, weight], None


def _builtin_linear_cross_entropy(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.t()).float(), targets)


ENTRIES = (
    Entry("flash_attention", "attention", {"B": 1, "H": 2, "T": 16, "D": 64}, _attention_inputs, _sdpa),
    Entry("add_layer_norm", "layernorm", {"rows": 16, "cols": 64}, _layernorm_inputs, _builtin_add_layer_norm),
    Entry("cross_entropy", "cross_entropy", {"tokens": 16, "vocab": 64}, _cross_entropy_inputs,
          _builtin_cross_entropy),
    Entry("linear_cross_entropy", "cross_entropy", {"tokens": 16, "vocab": 64, "hidden": 32},
          _linear_cross_entropy_inputs, _builtin_linear_cross_entropy),
)


# ----------------------------------------------------------------------------- timing


def call_counts(settings: Settings) -> tuple[int, int]:
    """``(calls per sample, samples)``."""
    return (20, 5) if settings.quick else (200, 15)


def _step(call: Callable[..., torch.Tensor], args: tuple, leaves: list, upstream, mode: str) -> Callable[[], object]:
    if mode == "fwd":
        return lambda: call(*args)

    def forward_backward():
        out = call(*args)
        return torch.autograd.grad(out, leaves, upstream)

    return forward_backward


def time_per_call(fn: Callable[[], object], settings: Settings, device: torch.device) -> dict:
    """Per-call time of ``fn``; each sample is the mean over ``calls`` back-to-back calls.

    On the CPU the clock is the calling thread's CPU time (autograd runs CPU backward passes
    on that thread), so other load on a shared machine does not count; on CUDA it is wall
    time with a synchronisation at each end of a sample."""
    calls, samples = call_counts(settings)
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    for _ in range(max(3, calls // 10)):
        fn()
    per_call = []
    for _ in range(samples):
        synchronize(device)
        start = clock()
        for _ in range(calls):
            fn()
        synchronize(device)
        per_call.append((clock() - start) * 1e3 / calls)
    method = "perf_counter (wall)" if device.type == "cuda" else "thread_time (CPU time of the calling thread)"
    record = summarize(per_call, f"{method}, mean of back-to-back calls", calls=calls)
    record["median_us"] = record["median_ms"] * 1e3
    return record


def measure_entry(entry: Entry, mode: str, settings: Settings, device: torch.device, dtype: torch.dtype,
                  no_op: bool) -> dict:
    """One dispatch record: ``entry`` in ``mode``, ours and the built-in."""
    launches = "no-op" if no_op else "real"
    record = {"op": entry.name, "mode": mode, "launches": launches, "device": device.type,
              "dtype": str(dtype).removeprefix("torch."), "shape": dict(entry.shape), "impls": {}}
    args, leaves, upstream = entry.inputs(device, dtype, mode == "fwd+bwd")
    for name, call in (("ours", entry.ours()), ("torch", entry.builtin)):
        fn = _step(call, args, leaves, upstream, mode)

        def run(fn=fn, stub=no_op and name == "ours") -> dict:
            with no_op_launches() if stub else contextlib.nullcontext():
                return time_per_call(fn, settings, device)

        record["impls"][name] = guarded(settings, run)
    settings.log(f"dispatch {entry.name} {mode} ({launches} launches): "
                 + ", ".join(f"{n} {_brief(r)}" for n, r in record["impls"].items()))
    return record


def _brief(record: dict) -> str:
    if "median_us" in record:
        return f"{record['median_us']:.0f} us"
    return record.get("error") or record.get("skipped") or "?"


def skip_reason() -> str | None:
    """Why the dispatch cases cannot run here (Triton does not import), or None."""
    from gpt1_kernels import triton_available

    return None if triton_available() else "Triton is not importable here"


def run_dispatch(settings: Settings) -> list[dict]:
    """Every entry point in both modes: no-op launches on the CPU (fp32), then, on CUDA,
    real launches in ``settings.dtype``."""
    reason = skip_reason()
    if reason:
        return [{"op": entry.name, "mode": mode, "skipped": reason, "impls": {}}
                for entry in ENTRIES for mode in MODES]
    cpu = torch.device("cpu")
    with one_torch_thread():
        records = [measure_entry(entry, mode, settings, cpu, torch.float32, True)
                   for entry in ENTRIES for mode in MODES]
    if settings.cuda:
        records += [measure_entry(entry, mode, settings, settings.device, settings.dtype, False)
                    for entry in ENTRIES for mode in MODES]
    return records
