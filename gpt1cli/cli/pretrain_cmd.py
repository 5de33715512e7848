"""`gpt1 pretrain`: train a GPT decoder on token shards (language-modelling objective L1)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..config import PRESETS
from ..train.pretrain import PretrainConfig
from ..train.distributed import world_from_env
from ..train.pretrain import pretrain as run_pretrain


def pretrain(
    shards: Path = typer.Option(..., help="Shard directory written by `gpt1 tokenize`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: checkpoints/, metrics.jsonl."),
    preset: str = typer.Option("tiny", help=f"Model size: {', '.join(PRESETS)} (gpt1 = the paper's 12 x 768; gpt3-* = the GPT-3 table)."),
    arch: str = typer.Option("gpt1", help="gpt1 (post-LN) or gpt2 (pre-LN, final LayerNorm, scaled residual init)."),
    n_ctx: Optional[int] = typer.Option(None, help="Context length [default: the preset's]."),
    attention: str = typer.Option("dense", help="dense, or alternating: every second layer locally banded (GPT-3's sparse layers)."),
    window: Optional[int] = typer.Option(None, help="Band width of the banded layers, in tokens [default: 256]."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps [default: the preset's; tiny 200]."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per step, over all micro-steps [default: the preset's; gpt1 64]."),
    grad_accum: int = typer.Option(1, help="Micro-steps per optimiser step (batch-size is split over them)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate [default: the preset's; gpt1 2.5e-4]."),
    warmup: Optional[int] = typer.Option(None, help="Linear warm-up steps before cosine decay [default: 2000 or steps/10, whichever is smaller]."),
    weight_decay: float = typer.Option(0.01, help="AdamW decay on weights (not biases or gains)."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clipping."),
    dropout: float = typer.Option(0.1, help="Dropout on embeddings, residuals and attention weights."),
    seed: int = typer.Option(0, help="Seed of initialisation, dropout and batch order."),
    eval_every: int = typer.Option(100, help="Evaluate on the validation split every N steps."),
    eval_tokens: int = typer.Option(65_536, help="Validation tokens per evaluation."),
    ckpt_every: int = typer.Option(500, help="Write a checkpoint every N steps (and at the end)."),
    keep: int = typer.Option(3, help="Checkpoints kept (oldest removed first)."),
    log_every: int = typer.Option(10, help="Log training metrics every N steps."),
    max_bad_steps: int = typer.Option(10, help="Stop after this many non-finite steps in a row."),
    stop_after: Optional[int] = typer.Option(None, help="End this invocation after step N (checkpointed) without changing the schedule."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    parallel: str = typer.Option("ddp", help="Under torchrun: ddp (replicated) or fsdp (FSDP2, blocks sharded, bf16 on CUDA)."),
    dist_timeout: float = typer.Option(600.0, help="Seconds a rank waits for the others before the job fails."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint, exactly."),
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
    summary = run_pretrain(config, show_progress=not quiet)
    if world_from_env().rank != 0:
        return
    val = summary.get("val") or {}
    Console().print(
        f"trained to step {summary['stopped_at']} of {summary['steps']}: loss {summary['loss']:.4f}, "
        f"val loss {val.get('loss', float('nan')):.4f}, ppl {val.get('ppl', float('nan')):.2f}, "
        f"bpb {val.get('bpb', float('nan')):.4f}; {summary.get('tokens_per_s', float('nan')):,.0f} tokens/s "
        f"({summary['kernels']}); checkpoints in {out}/checkpoints"
    )
