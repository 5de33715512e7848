"""End-to-end training-step benchmark: forward, backward and AdamW step of a GPT preset.

Paths: ``eager`` (``GPT1_KERNELS=torch``), ``compile`` (the same under ``torch.compile``),
``ours`` (``GPT1_KERNELS=triton``) and ``ours+compile``. The batch is fixed random tokens
already on the device, so the figures are compute only. As in ``gpt1 pretrain``: dropout on,
bf16 (or ``--dtype``) autocast on CUDA, fused AdamW with the paper's decoupled weight decay.

MFU = (6 x params + 12 x layers x d_model x context) x tokens/s / dense bf16 peak, the
PaLM-style count (attention counted over the full context, not halved for causality).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from gpt1cli.config import count_parameters, preset
from gpt1cli.model.gpt import GPT
from gpt1cli.train.optim import make_optimizer

from .env import device_name, peak_bf16_flops
from .harness import (
    Settings,
    autocast_for,
    derive_speeds,
    guarded,
    kernel_path,
    reset_compiler,
    summarize,
    synchronize,
)

BASELINE = "eager"
PATHS = (
    # name, GPT1_KERNELS, compiled
    ("eager", "torch", False),
    ("compile", "torch", True),
    ("ours", "triton", False),
    ("ours+compile", "triton", True),
)
GPT1_VOCAB = 40478
MFU_FORMULA = "(6 x params + 12 x layers x d_model x n_ctx) x tokens/s / peak bf16 FLOP/s"


@dataclass(frozen=True)
class TrainCase:
    preset: str
    vocab_size: int
    batch_size: int


def train_cases(settings: Settings) -> list[TrainCase]:
    if settings.quick:
        return [TrainCase("tiny", 512, 4)]
    if settings.cuda:
        return [TrainCase("gpt1", GPT1_VOCAB, 16), TrainCase("mini", 8000, 32)]
    return [TrainCase("mini", 8000, 8), TrainCase("tiny", 512, 8)]


def step_counts(settings: Settings) -> tuple[int, int]:
    """(warm-up steps, timed steps); the first warm-up step compiles."""
    if settings.quick:
        return 1, 3
    return 3, 10


class LossModel(nn.Module):
    """Forward plus LM loss in one module, so ``torch.compile`` sees the loss too."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.model.lm_loss(self.model(idx), targets)


def flops_per_token(config) -> float:
    """6 x params (dense forward+backward) + 12 x layers x d_model x context (attention)."""
    return 6.0 * count_parameters(config) + 12.0 * config.n_layer * config.d_model * config.n_ctx


def _skip_reason(settings: Settings, choice: str, compiled: bool) -> str | None:
    if choice == "triton" and settings.triton_mode != "compiled":
        return ("Triton training steps need CUDA (kernels section times the interpreter)"
                    if settings.triton_mode == "interpreter" else settings.triton_skip_reason())
    if compiled:
        return settings.compile_skip_reason()
    return None


def _time_steps(case: TrainCase, settings: Settings, choice: str, compiled: bool) -> dict:
    config = preset(case.preset, case.vocab_size)
    warmup, timed = step_counts(settings)
    with kernel_path(choice):
        torch.manual_seed(0)
        model = GPT(config).to(settings.device)
        model.train()
        optimizer = make_optimizer(model, lr=2.5e-4, weight_decay=0.01)
        runner: nn.Module = LossModel(model)
        if compiled:
            reset_compiler()
            runner = torch.compile(runner)
        tokens = torch.randint(0, config.vocab_size, (case.batch_size, config.n_ctx + 1), device=settings.device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]

        def step() -> None:
            with autocast_for(settings):
                loss = runner(inputs, targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        synchronize(settings.device)
        start = time.perf_counter()
        step()
        synchronize(settings.device)
        first = time.perf_counter() - start
        for _ in range(warmup - 1):
            step()
        if settings.cuda:
            synchronize(settings.device)
            torch.cuda.reset_peak_memory_stats(settings.device)
        samples = []
        for _ in range(timed):
            synchronize(settings.device)
            start = time.perf_counter()
            step()
            synchronize(settings.device)
            samples.append((time.perf_counter() - start) * 1e3)
        peak = int(torch.cuda.max_memory_allocated(settings.device)) if settings.cuda else None
    record = summarize(samples, "perf_counter per step (synchronized)", warmup=warmup)
    record.update(first_call_s=first, peak_mem_bytes=peak)
    return record


def skip_reason(settings: Settings, path: str) -> str | None:
    """Why the path named ``path`` (one of ``PATHS``) is not run here, or None."""
    for name, choice, compiled in PATHS:
        if name == path:
            return _skip_reason(settings, choice, compiled)
    raise ValueError(f"unknown training path {path!r}")


def run_train(settings: Settings, cases: list[TrainCase] | None = None, paths: list[str] | None = None) -> dict:
    """Training-step throughput of each path (or the named ``paths``) for each preset (or ``cases``).

    The GPU check runs one path per process (``paths=[name]``) and merges the records with
    :func:`derive`, so a path that crashes the process or outlasts its time costs only itself."""
    peak = peak_bf16_flops(device_name(settings.device)) if settings.cuda else None
    results = []
    for case in train_cases(settings) if cases is None else cases:
        config = preset(case.preset, case.vocab_size)
        tokens = case.batch_size * config.n_ctx
        entry = {
            "preset": case.preset, "vocab_size": case.vocab_size, "batch_size": case.batch_size,
            "n_ctx": config.n_ctx, "tokens_per_step": tokens, "parameters": count_parameters(config),
            "flops_per_token": flops_per_token(config), "peak_flops": peak,
            "autocast": settings.dtype_name if settings.cuda and settings.dtype != torch.float32 else None,
            "baseline": BASELINE, "impls": {},
        }
        for name, choice, compiled in PATHS:
            if paths is not None and name not in paths:
                continue
            reason = _skip_reason(settings, choice, compiled)
            if reason:
                record = {"skipped": reason}
            else:
                record = guarded(settings, lambda case=case, choice=choice, compiled=compiled:
                                 _time_steps(case, settings, choice, compiled))
                if compiled:
                    reset_compiler()
            record.update(kernels=choice, compiled=compiled)
            entry["impls"][name] = record
            settings.log(f"train {case.preset} {name}: "
                         + (f"{record['median_ms']:.4g} ms/step" if "median_ms" in record
                            else record.get("error") or record.get("skipped")))
        results.append(derive(entry))
    return {"mfu_formula": MFU_FORMULA, "cases": results}


def derive(entry: dict) -> dict:
    """Tokens/s, MFU and speed-up over eager, from the recorded median step times."""

    def rates(record: dict, seconds: float) -> None:
        record["tokens_per_s"] = entry["tokens_per_step"] / seconds
        flops = entry["flops_per_token"] * record["tokens_per_s"]
        record["mfu"] = flops / entry["peak_flops"] if entry["peak_flops"] else None

    return derive_speeds(entry, rates)

