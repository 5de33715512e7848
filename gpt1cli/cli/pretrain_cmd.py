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
    n_ctx: Optional[int] = typer.Option(None, help="Context length.", show_default="the preset's"),
    attention: str = typer.Option("dense", help="dense, or alternating: every second layer locally banded (GPT-3's sparse layers)."),
    window: Optional[int] = typer.Option(None, help="Band width of the banded layers, in tokens.", show_default="256"),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps.", show_default="the preset's; tiny 200"),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per step, over all micro-steps.", show_default="the preset's; gpt1 64"),
    grad_accum: int = typer.Option(1, help="Micro-steps per optimiser step (batch-size is split over them)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate.", show_default="the preset's; gpt1 2.5e-4"),
    warmup: Optional[int] = typer.Option(None, help="Linear warm-up steps before cosine decay.", show_default="2000 or steps/10, whichever is smaller"),
    weight_decay: float = typer.Option(0.01, help="AdamW decay on weights (not biases or gains)."),
    grad_clip: float = typer.Option(1.0, help="Gradient-norm clipping."),
    dropout: float = typer.Option(0.1, help="Dropout on embeddings, residuals and attention weights."),
    seed: int = typer.Option(0, help="Seed of initialisation, dropout and batch order."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on the validation split every N steps.", show_default="100"),
    eval_tokens: Optional[int] = typer.Option(None, help="Validation tokens per evaluation.", show_default="65536"),
    ckpt_every: Optional[int] = typer.Option(None, help="Write a checkpoint every N steps (and at the end).", show_default="500"),
    keep: Optional[int] = typer.Option(None, help="Checkpoints kept (oldest removed first), besides the best by validation loss.", show_default="3"),
    log_every: Optional[int] = typer.Option(None, help="Log training metrics every N steps.", show_default="10"),
    max_bad_steps: Optional[int] = typer.Option(None, help="Stop after this many non-finite steps in a row.", show_default="10"),
    stop_after: Optional[int] = typer.Option(None, help="End this invocation after step N (checkpointed) without changing the schedule."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    parallel: Optional[str] = typer.Option(None, help="Under torchrun: ddp (replicated) or fsdp (FSDP2, blocks sharded, bf16 on CUDA).", show_default="ddp"),
    dist_timeout: Optional[float] = typer.Option(None, help="Seconds a rank waits for the others before the job fails.", show_default="600"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint, exactly, with its saved settings (only --shards, --steps, --stop-after and the logging, evaluation and checkpoint cadences may be given anew)."),
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
