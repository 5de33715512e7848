"""Timing, memory, time budgets and failure capture shared by every benchmark section.

Conventions of a measurement (an "impl" record in the results file):

* ``median_ms``: median of the timed samples, in milliseconds.
* ``timing``: how it was taken (``method``), how many samples (``n``) and the raw samples
  (``samples_ms``), or, when there are many, their quantiles (``quantiles_ms``).
* ``first_call_s``: the first call, which pays for compilation and autotuning.
* ``peak_mem_bytes``: ``torch.cuda.max_memory_allocated()`` over one call after a reset
  (inputs included); ``None`` on CPU.
* A failed implementation is ``{"error": "..."}``, one not run is ``{"skipped": "..."}``.
* ``interpreted: true`` marks Triton run by its CPU interpreter: its times are recorded but are
  never turned into speeds.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from gpt1cli.errors import Gpt1Error

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# Raw samples beyond this count are stored as quantiles, keeping results files small.
MAX_RAW_SAMPLES = 50
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


class Budget:
    """A wall-clock deadline; sections draw shares of what is left."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.deadline = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def share(self, fraction: float) -> "Budget":
        """A sub-budget of ``fraction`` of the time left (never past this deadline)."""
        return Budget(self.remaining() * min(max(fraction, 0.0), 1.0))


@dataclass
class Settings:
    """What every section needs to know about the run."""

    device: torch.device
    dtype: torch.dtype
    quick: bool
    triton_mode: str  # "compiled", "interpreter" or "unavailable"
    budget: Budget = field(default_factory=lambda: Budget(math.inf))
    log: Callable[[str], None] = lambda message: None
    corpus_mb: float = 2000.0  # size of the generated corpus of the tokenize peak-memory case

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    @property
    def interpreted(self) -> bool:
        return self.triton_mode == "interpreter"

    # do_bench's warm-up and measuring windows (ms) on CUDA; counts on CPU.
    @property
    def warmup_ms(self) -> int:
        return 5 if self.quick else 25

    @property
    def rep_ms(self) -> int:
        return 20 if self.quick else 100

    @property
    def cpu_warmup(self) -> int:
        return 1 if self.quick else 2

    @property
    def cpu_repeats(self) -> int:
        return 3 if self.quick else 10

    def compile_skip_reason(self) -> str | None:
        """Why ``torch.compile`` variants are not run, or None when they are."""
        if self.quick and not self.cuda:
            return "torch.compile is not timed by --quick on CPU (compiling outlasts the run)"
        return None

    def triton_skip_reason(self) -> str | None:
        """Why Triton kernels cannot run here, or None when they can (possibly interpreted)."""
        if self.triton_mode == "unavailable":
            if self.cuda:
                return "Triton is not importable here"
            return "Triton needs CUDA (TRITON_INTERPRET=1 runs it interpreted)"
        return None


def parse_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA and fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise Gpt1Error(f"--dtype must be one of auto, {', '.join(DTYPES)}, not {name!r}")
    return DTYPES[name]


def triton_mode(device: torch.device) -> str:
    """How the Triton kernels would run on ``device``."""
    from gpt1_kernels import triton_available, triton_interpreting

    if not triton_available():
        return "unavailable"
    if triton_interpreting():
        return "interpreter"
    return "compiled" if device.type == "cuda" else "unavailable"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clear_grads(tensors: Iterable[torch.Tensor]) -> None:
    for tensor in tensors:
        tensor.grad = None


def _round(value: float, digits: int = 5) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, max(0, digits - 1 - int(math.floor(math.log10(abs(value))))))


def _quantile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = int(math.floor(position))
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(samples_ms: list[float], method: str, **extra) -> dict:
    """A measurement record from raw samples (see the module docstring)."""
    samples = [float(s) for s in samples_ms]
    timing: dict = {"method": method, "n": len(samples), **extra}
    if len(samples) <= MAX_RAW_SAMPLES:
        timing["samples_ms"] = [_round(s) for s in samples]
    else:
        ordered = sorted(samples)
        timing["quantiles_ms"] = {f"p{int(q * 100)}": _round(_quantile(ordered, q)) for q in QUANTILES}
    return {"median_ms": statistics.median(samples), "timing": timing}


def _do_bench(fn: Callable[[], object], settings: Settings, grads: list[torch.Tensor]) -> list[float]:
    from triton.testing import do_bench

    try:
        samples = do_bench(fn, warmup=settings.warmup_ms, rep=settings.rep_ms, grad_to_none=grads or None,
                           return_mode="all")
    except (AssertionError, TypeError):  # a Triton without return_mode="all"
        samples = do_bench(fn, warmup=settings.warmup_ms, rep=settings.rep_ms, grad_to_none=grads or None,
                           quantiles=[0.2, 0.5, 0.8])
    return list(samples) if isinstance(samples, (list, tuple)) else [float(samples)]


def measure(
    fn: Callable[[], object],
    settings: Settings,
    *,
    grads: Iterable[torch.Tensor] = (),
    interpreted: bool = False,
) -> dict:
    """Time ``fn``: one first call, then do_bench on CUDA or warm-up + repeats on CPU.

    ``grads`` are leaf tensors whose ``.grad`` is reset before each call (outside the timing),
    so backward passes never accumulate. Interpreted kernels get the first call only.
    """
    grads = list(grads)
    _clear_grads(grads)
    synchronize(settings.device)
    start = time.perf_counter()
    fn()
    synchronize(settings.device)
    first = time.perf_counter() - start
    if interpreted:
        record = summarize([first * 1e3], "interpreter")
        record.update(first_call_s=first, interpreted=True)
        return record
    if settings.cuda:
        try:
            import triton.testing  # noqa: F401
            have_triton = True
        except Exception:
            have_triton = False
        if have_triton:
            record = summarize(_do_bench(fn, settings, grads), "triton.testing.do_bench",
                               warmup_ms=settings.warmup_ms, rep_ms=settings.rep_ms)
            record["first_call_s"] = first
            return record
    samples = []
    for _ in range(settings.cpu_warmup):
        _clear_grads(grads)
        fn()
    for _ in range(settings.cpu_repeats):
        _clear_grads(grads)
        synchronize(settings.device)
        start = time.perf_counter()
        fn()
        synchronize(settings.device)
        samples.append((time.perf_counter() - start) * 1e3)
    record = summarize(samples, "perf_counter", warmup=settings.cpu_warmup)
    record["first_call_s"] = first
    return record


def peak_memory(fn: Callable[[], object], settings: Settings, *, grads: Iterable[torch.Tensor] = ()) -> int | None:
    """``max_memory_allocated`` over one call of ``fn`` after a reset (CUDA only)."""
    if not settings.cuda:
        return None
    _clear_grads(grads)
    synchronize(settings.device)
    torch.cuda.reset_peak_memory_stats(settings.device)
    fn()
    synchronize(settings.device)
    return int(torch.cuda.max_memory_allocated(settings.device))


def error_text(exc: BaseException, limit: int = 300) -> str:
    """One line naming the exception type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def free_memory(device: torch.device) -> None:
    """Return a finished case's memory to CUDA, so the next case's peak is its own.

    On CPU reference counting already freed it; a full collection there costs more than
    the quick cases themselves."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _forget_kernel_path() -> None:
    """Make the ops interface read ``GPT1_KERNELS`` again, should it keep a resolved path.

    Calls ``gpt1cli.model.ops.reset_kernel_path()`` when ops is imported and has one; an ops
    module that reads the variable at every call needs nothing."""
    ops = sys.modules.get("gpt1cli.model.ops")
    reset = getattr(ops, "reset_kernel_path", None)
    if callable(reset):
        reset()


@contextlib.contextmanager
def kernel_path(choice: str) -> Iterator[None]:
    """Set ``GPT1_KERNELS`` for the block (and let the ops interface resolve it anew)."""
    before = os.environ.get("GPT1_KERNELS")
    os.environ["GPT1_KERNELS"] = choice
    _forget_kernel_path()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GPT1_KERNELS", None)
        else:
            os.environ["GPT1_KERNELS"] = before
        _forget_kernel_path()


def autocast_for(settings: Settings):
    """Mixed precision as the toolkit trains: autocast to the chosen dtype on CUDA, none on CPU."""
    if settings.cuda and settings.dtype != torch.float32:
        return torch.autocast("cuda", dtype=settings.dtype)
    return contextlib.nullcontext()


def reset_compiler() -> None:
    """Forget compiled graphs, so each compiled case compiles for its own shapes."""
    try:
        torch._dynamo.reset()
    except Exception:  # an unusable dynamo shows up when compiling, where it is recorded
        pass


def guarded(settings: Settings, run: Callable[[], dict]) -> dict:
    """Run one implementation; a failure or an exhausted budget becomes a record, never a crash."""
    if settings.budget.expired():
        return {"skipped": "time budget (--max-minutes) used up"}
    try:
        return run()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # OOM, compile failures, kernels not finished: recorded, not raised
        return {"error": error_text(exc)}
    finally:
        free_memory(settings.device)


def derive_speeds(entry: dict, rates: Callable[[dict, float], None]) -> dict:
    """For each implementation of ``entry`` with a median time: ``rates(record, seconds)`` adds
    its rates, then its speed-up over ``entry["baseline"]`` is set. Returns ``entry``."""
    baseline = entry["impls"].get(entry["baseline"])
    for record in entry["impls"].values():
        if "median_ms" in record:
            rates(record, record["median_ms"] / 1e3)
            record["speedup"] = speedup(baseline, record)
    return entry


def speedup(baseline: dict | None, impl: dict) -> float | None:
    """``baseline time / impl time``; None when either is missing, failed or interpreted."""
    if not baseline or impl is baseline:
        return 1.0 if impl is baseline and _timed(impl) else None
    if not (_timed(baseline) and _timed(impl)):
        return None
    return baseline["median_ms"] / impl["median_ms"]


def _timed(record: dict) -> bool:
    return bool(record) and "median_ms" in record and not record.get("interpreted") and record["median_ms"] > 0
