"""`gpt1 pretrain`: train a GPT decoder on token shards (language-modelling objective L1)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..config import PRESETS
from ..train.distributed import world_from_env
from ..train.memory import human_bytes
from ..train.pretrain import PretrainConfig, check_setting
from ..train.pretrain import pretrain as run_pretrain


SETTINGS = {f.name for f in dataclasses.fields(PretrainConfig)}


def _checked(name: str):
    """A parse-time check of a numeric option by the library's own rule (one clear error line)."""

    def callback(ctx: typer.Context, value):
        if not ctx.resilient_parsing:
            check_setting(name, value)
        return value

    return callback


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given (command line or environment), not left to its default."""
    source = ctx.get_parameter_source(name)
    # Compared by name: Typer bundles its own copy of click, whose enum is not click's.
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def pretrain(
    ctx: typer.Context,
    shards: Path = typer.Option(..., help="Shard directory written by `gpt1 tokenize`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints/, metrics.jsonl."),
    preset: str = typer.Option("tiny", help=f"Model size: {', '.join(PRESETS)} (gpt1 = the paper's 12 x 768; gpt3-* = the GPT-3 table)."),
    arch: str = typer.Option("gpt1", help="gpt1 (post-LN) or gpt2 (pre-LN, final LayerNorm, scaled residual init)."),
    n_ctx: Optional[int] = typer.Option(None, help="Context length.", show_default="the preset's", callback=_checked("n_ctx")),
    attention: str = typer.Option("dense", help="dense, or alternating: every second layer locally banded (GPT-3's sparse layers)."),
    window: Optional[int] = typer.Option(None, help="Band width of the banded layers, in tokens.", show_default="256", callback=_checked("window")),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps.", show_default="the preset's; tiny 200", callback=_checked("steps")),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per step, over all micro-steps.", show_default="the preset's; gpt1 64", callback=_checked("batch_size")),
    grad_accum: int = typer.Option(1, help="Micro-steps per optimiser step (batch-size is split over them).", callback=_checked("grad_accum")),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (positive).", show_default="the preset's; gpt1 2.5e-4", callback=_checked("lr")),
    warmup: Optional[int] = typer.Option(None, help="Linear warm-up steps before cosine decay.", show_default="2000 or steps/10, whichever is smaller", callback=_checked("warmup")),
    weight_decay: float = typer.Option(0.01, help="AdamW decay on weights (not biases or gains); >= 0.", callback=_checked("weight_decay")),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clipping threshold (positive).", callback=_checked("grad_clip")),
    dropout: float = typer.Option(0.1, help="Dropout on embeddings, residuals and attention weights, in [0, 1).", callback=_checked("dropout")),
    seed: int = typer.Option(0, help="Seed of initialisation, dropout and batch order (0 to 2^63 - 1).", callback=_checked("seed")),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on the validation split every N steps.", show_default="100", callback=_checked("eval_every")),
    eval_tokens: Optional[int] = typer.Option(None, help="Validation tokens per evaluation.", show_default="65536", callback=_checked("eval_tokens")),
    ckpt_every: Optional[int] = typer.Option(None, help="Write a checkpoint every N steps (and at the end).", show_default="500", callback=_checked("ckpt_every")),
    keep: Optional[int] = typer.Option(None, help="Checkpoints kept (oldest removed first), besides the best by validation loss.", show_default="3", callback=_checked("keep")),
    log_every: Optional[int] = typer.Option(None, help="Log training metrics every N steps.", show_default="10", callback=_checked("log_every")),
    max_bad_steps: Optional[int] = typer.Option(None, help="Stop after this many non-finite steps in a row.", show_default="10", callback=_checked("max_bad_steps")),
    stop_after: Optional[int] = typer.Option(None, help="End this invocation after step N (checkpointed) without changing the schedule.", callback=_checked("stop_after")),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    parallel: Optional[str] = typer.Option(None, help="Under torchrun: ddp (replicated) or fsdp (FSDP2, blocks sharded, bf16 on CUDA).", show_default="ddp"),
    dist_timeout: Optional[float] = typer.Option(None, help="Seconds a rank waits for the others before the job fails.", show_default="600", callback=_checked("dist_timeout")),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint, exactly, with its saved settings (only --shards, --device, --steps, --stop-after, --parallel, --dist-timeout, --max-bad-steps and the logging, evaluation and checkpoint cadences may be given anew; other options must match the run). A run without a checkpoint yet starts from step 0."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything, print the parameters, FLOPs per token, memory estimate and settings, and exit without writing anything."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Pre-train a GPT decoder on token shards; checkpoints are safetensors + JSON."""
    config = PretrainConfig(
        shards=str(shards), out=str(out), preset=preset, arch=arch, n_ctx=n_ctx, attention=attention, window=window, steps=steps, batch_size=batch_size,
        grad_accum=grad_accum, lr=lr, warmup=warmup, weight_decay=weight_decay, grad_clip=grad_clip, dropout=dropout,
        seed=seed, eval_every=eval_every, eval_tokens=eval_tokens, ckpt_every=ckpt_every, keep=keep,
        log_every=log_every, max_bad_steps=max_bad_steps, stop_after=stop_after, device=device, compile=compile,
        parallel=parallel, dist_timeout=dist_timeout, resume=resume,
    )
    # Options typed on the command line: on --resume each must agree with the run's saved settings.
    given = {name for name in ctx.params if name in SETTINGS and _typed(ctx, name)}
    summary = run_pretrain(config, show_progress=not quiet, dry_run=dry_run, given=given)
    if world_from_env().rank != 0:
        return
    console = Console(highlight=False, soft_wrap=True)
    if summary.get("dry_run"):
        _print_plan(console, summary)
        return
    val = summary.get("val") or {}
    figures = (f"loss {summary['loss']:.4f}, val loss {val.get('loss', math.nan):.4f}, ppl {val.get('ppl', math.nan):.2f}, "
               f"bpb {val.get('bpb', math.nan):.4f}")
    if summary.get("nothing_to_do"):
        console.print(escape(
            f"nothing to do: {out} already reached step {summary['stopped_at']} ({summary['limit']}); "
            f"its figures at that step: {figures}, {summary.get('tokens_per_s', math.nan):,.0f} tokens/s; "
            f"checkpoints in {out}/checkpoints (pass a larger --steps to train further)"))
        return
    console.print(escape(
        f"trained to step {summary['stopped_at']} of {summary['steps']}: {figures}; "
        f"{summary.get('tokens_per_s', float('nan')):,.0f} tokens/s ({summary['kernels']}); checkpoints in {out}/checkpoints"
    ))


def _print_plan(console: Console, plan: dict) -> None:
    """The dry run's report: what the run would be and cost."""
    memory = plan["memory"]
    estimate = memory["estimate"]
    model = plan["model"]
    available = memory["available"]
    fits = available is None or memory["needed"] <= available
    lines = [
        f"dry run: nothing written ({plan['out']} untouched)",
        f"parameters       {plan['parameters']:,}",
        f"FLOPs per token  {plan['flops_per_token']:.4g} (6 x parameters + 12 x layers x d_model x n_ctx, forward and backward)",
        f"tokens per step  {plan['tokens_per_step']:,} ({plan['config']['batch_size']} x {model['n_ctx']}; micro-batch "
        f"{plan['micro_batch']} on each of {plan['world_size']} process(es))",
        f"FLOPs per step   {plan['flops_per_token'] * plan['tokens_per_step']:.4g}",
        f"memory estimate  {human_bytes(estimate.total)} per process: {human_bytes(estimate.state)} weights, gradients and "
        f"AdamW state (16 bytes x parameters), {human_bytes(estimate.activations)} activations of a micro-batch, "
        f"{human_bytes(estimate.data)} sampled windows; {human_bytes(estimate.checkpoint)} while a checkpoint is written"
        + (f"; x {memory['sharing']} processes on this machine" if memory["sharing"] > 1 else ""),
        f"memory available {human_bytes(available) if available is not None else 'unknown'} on {plan['device']}: "
        + ("fits" if fits else "does NOT fit; the run would be refused"),
        f"steps            {plan['start_step']} -> {plan['end_step']} of {plan['config']['steps']}",
        f"kernels          {plan['kernels']}",
        "model            " + ", ".join(f"{k}={v}" for k, v in model.items()),
        "settings         " + ", ".join(f"{k}={v}" for k, v in plan["config"].items()),
    ]
    for line in lines:
        console.print(escape(line))
