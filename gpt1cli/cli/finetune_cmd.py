"""`gpt1 finetune`: adapt a pre-trained run to a labelled task with one linear head, or to a generative task."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import Gpt1Error
from ..tasks.finetune import FinetuneConfig
from ..train.distributed import world_from_env
from ..tasks.finetune import finetune as run_finetune


CLASSIFIER_OPTIONS = ("regression", "lm_coef", "head_dropout")
GENERATE_OPTIONS = ("loss_on_prompt", "max_new_tokens")


def finetune(
    ctx: typer.Context,
    task: str = typer.Option(..., help="classify, entail, similar, mcq, or generate (prompt/completion pairs, no head)."),
    train: Path = typer.Option(..., help="Training examples (.jsonl, .csv or .parquet; fields per task in the README)."),
    val: Path = typer.Option(..., help="Validation examples; the best checkpoint by --metric on them is kept."),
    from_run: Path = typer.Option(..., "--from", help="Pre-trained checkpoint or run directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory for the fine-tuned checkpoint and metrics.jsonl."),
    init: str = typer.Option("pretrained", help="pretrained, or random: same model and tokenizer with fresh weights (no pre-training)."),
    regression: bool = typer.Option(False, "--regression", help="similar only: a numeric target with MSE loss (as STS-B)."),
    lm_coef: float = typer.Option(0.5, help="lambda of the auxiliary LM loss L1 (0 turns it off)."),
    lr: float = typer.Option(6.25e-5, help="Peak learning rate."),
    batch_size: int = typer.Option(32, help="Examples per step."),
    epochs: int = typer.Option(3, help="Passes over the training examples."),
    warmup_fraction: float = typer.Option(0.002, help="Share of training spent in linear warm-up before linear decay."),
    weight_decay: float = typer.Option(0.01, help="AdamW decay on weights (not biases or gains)."),
    head_dropout: float = typer.Option(0.1, help="Dropout before the linear head."),
    metric: Optional[str] = typer.Option(None, help="Model selection: accuracy, macro_f1, mcc, pearson, spearman; generate: loss, bleu, chrf, rougeL, exact (greedy decoding of --val).", show_default="accuracy, pearson with --regression, loss for generate"),
    loss_on_prompt: bool = typer.Option(False, "--loss-on-prompt", help="generate: also train on the prompt's tokens, not only the completion's."),
    max_new_tokens: Optional[int] = typer.Option(None, help="generate with a decoding --metric: most tokens per output.", show_default="the longest val completion + 8"),
    eval_every: Optional[int] = typer.Option(None, help="Validate every N steps.", show_default="once per epoch"),
    seed: int = typer.Option(0, help="Seed of the head, dropout and example order."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    parallel: str = typer.Option("ddp", help="Under torchrun: ddp (replicated) or fsdp (FSDP2, blocks sharded)."),
    dist_timeout: float = typer.Option(600.0, help="Seconds a rank waits for the others before the job fails."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune with the paper's input transformations and loss L3 = L2 + lambda * L1, or (--task
    generate) on prompt/completion pairs with the LM loss on the completion."""
    given = {name for name in (*CLASSIFIER_OPTIONS, *GENERATE_OPTIONS)
             if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    if task == "generate":
        if given & set(CLASSIFIER_OPTIONS):
            raise Gpt1Error(f"--{sorted(given & set(CLASSIFIER_OPTIONS))[0].replace('_', '-')} applies to the tasks "
                            f"with a head; --task generate trains the LM on the completions")
        from ..tasks.generative import GenerativeConfig, finetune_generate

        config = GenerativeConfig(
            train=str(train), val=str(val), from_run=str(from_run), out=str(out), init=init,
            loss_on_prompt=loss_on_prompt, lr=lr, batch_size=batch_size, epochs=epochs,
            warmup_fraction=warmup_fraction, weight_decay=weight_decay, metric=metric, max_new_tokens=max_new_tokens,
            eval_every=eval_every, seed=seed, device=device, parallel=parallel, dist_timeout=dist_timeout,
        )
        summary = finetune_generate(config, show_progress=not quiet)
        if world_from_env().rank == 0:
            Console().print(f"generate: best val {summary['metric']} {summary['best']:.4f} after {summary['steps']} "
                            f"steps ({summary['seconds']} s); checkpoint in {out}/checkpoints")
        return
    if given & set(GENERATE_OPTIONS):
        raise Gpt1Error(f"--{sorted(given & set(GENERATE_OPTIONS))[0].replace('_', '-')} applies to --task generate")
    config = FinetuneConfig(
        task=task, train=str(train), val=str(val), from_run=str(from_run), out=str(out), init=init,
        regression=regression, lm_coef=lm_coef, lr=lr, batch_size=batch_size, epochs=epochs,
        warmup_fraction=warmup_fraction, weight_decay=weight_decay, head_dropout=head_dropout, metric=metric,
        eval_every=eval_every, seed=seed, device=device, parallel=parallel, dist_timeout=dist_timeout,
    )
    summary = run_finetune(config, show_progress=not quiet)
    if world_from_env().rank != 0:
        return
    Console().print(f"{summary['task']}: best val {summary['metric']} {summary['best']:.4f} after {summary['steps']} steps "
                    f"({summary['seconds']} s); checkpoint in {out}/checkpoints")
