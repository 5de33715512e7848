"""`gpt1 finetune`: adapt a pre-trained run to a labelled task with one linear head, or to a generative task."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..checks import SEED, option
from ..errors import Gpt1Error
from ..train.distributed import world_from_env

CLASSIFIER_OPTIONS = ("regression", "lm_coef", "head_dropout")
GENERATE_OPTIONS = ("loss_on_prompt", "max_new_tokens")
# Options that name the run rather than set it; with --resume the rest default to the run's own.
RUN_OPTIONS = ("resume", "overwrite", "out", "quiet")
NEEDED = {"task": "--task", "train": "--train", "val": "--val", "from_run": "--from"}


def finetune(
    ctx: typer.Context,
    task: Optional[str] = typer.Option(None, help="classify, entail, similar, mcq, or generate (prompt/completion pairs, no head). Required, except with --resume.", show_default="none"),
    train: Optional[Path] = typer.Option(None, help="Training examples (.jsonl, .csv or .parquet; fields per task in the README). Required, except with --resume.", show_default="none"),
    val: Optional[Path] = typer.Option(None, help="Validation examples; the best checkpoint by --metric on them is kept. Required, except with --resume.", show_default="none"),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Pre-trained checkpoint or run directory. Required, except with --resume.", show_default="none"),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory: the best checkpoint in checkpoints/, the resumable state in train-state/, metrics.jsonl."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly from its training state, with its own settings (only --device, --parallel, --dist-timeout and --max-bad-steps may change); a finished run reports its figures; without a state yet, the run starts."),
    overwrite: bool = typer.Option(False, help="Replace a run already in --out (its checkpoints, training state and metrics.jsonl)."),
    init: str = typer.Option("pretrained", help="pretrained, or random: same model and tokenizer with fresh weights (no pre-training)."),
    regression: bool = typer.Option(False, "--regression", help="similar only: a numeric target with MSE loss (as STS-B)."),
    lm_coef: float = typer.Option(0.5, callback=option(minimum=0), help="lambda of the auxiliary LM loss L1 (0 turns it off)."),
    lr: float = typer.Option(6.25e-5, callback=option(above=0), help="Peak learning rate."),
    batch_size: int = typer.Option(32, callback=option(minimum=1), help="Examples per step."),
    epochs: int = typer.Option(3, callback=option(minimum=1), help="Passes over the training examples."),
    warmup_fraction: float = typer.Option(0.002, callback=option(minimum=0, maximum=1), help="Share of training spent in linear warm-up before linear decay (0 to 1)."),
    weight_decay: float = typer.Option(0.01, callback=option(minimum=0), help="AdamW decay on weights (not biases or gains)."),
    head_dropout: float = typer.Option(0.1, callback=option(minimum=0, below=1), help="Dropout before the linear head (0 to below 1)."),
    metric: Optional[str] = typer.Option(None, help="Model selection: accuracy, macro_f1, mcc, pearson, spearman; generate: loss, bleu, chrf, rougeL, exact (greedy decoding of --val).", show_default="accuracy, pearson with --regression, loss for generate"),
    loss_on_prompt: bool = typer.Option(False, "--loss-on-prompt", help="generate: also train on the prompt's tokens, not only the completion's."),
    max_new_tokens: Optional[int] = typer.Option(None, callback=option(minimum=1), help="generate with a decoding --metric: most tokens per output.", show_default="the longest val completion + 8"),
    eval_every: Optional[int] = typer.Option(None, callback=option(minimum=1), help="Validate (and write the resumable state) every N steps.", show_default="once per epoch"),
    max_bad_steps: int = typer.Option(10, callback=option(minimum=1), help="Stop after this many non-finite steps in a row (each is skipped)."),
    seed: int = typer.Option(0, callback=option(**SEED), help="Seed of the head, dropout and example order."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    parallel: str = typer.Option("ddp", help="Under torchrun: ddp (replicated) or fsdp (FSDP2, blocks sharded)."),
    dist_timeout: float = typer.Option(600.0, callback=option(above=0), help="Seconds a rank waits for the others before the job fails."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune with the paper's input transformations and loss L3 = L2 + lambda * L1, or (--task
    generate) on prompt/completion pairs with the LM loss on the completion. Ctrl-C or SIGTERM
    stops at the next step with a resumable state (exit 75); --resume continues it."""
    from ..tasks.training import saved_settings

    values = dict(ctx.params)
    given = {name for name in values
             if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}
    saved = saved_settings(out) if resume else None
    if saved is not None:
        # The run's own settings stand in for every option not given; the library refuses changes.
        config = dict(saved["config"])
        if "task" not in given:
            values["task"] = saved["task"]
        for name, value in config.items():
            if name in values and name not in given and name not in RUN_OPTIONS:
                values[name] = value
    missing = [flag for name, flag in NEEDED.items() if values[name] is None]
    if missing:
        reason = (f" ({out} holds no training state to resume from yet, so the run starts anew)" if resume else "")
        raise Gpt1Error(f"finetune needs {', '.join(missing)}{reason}")
    notes = Console(stderr=True, soft_wrap=True, highlight=False)
    say = (lambda message: notes.print(message, markup=False)) if world_from_env().rank == 0 else (lambda message: None)
    if values["task"] == "generate":
        if given & set(CLASSIFIER_OPTIONS):
            raise Gpt1Error(f"--{sorted(given & set(CLASSIFIER_OPTIONS))[0].replace('_', '-')} applies to the tasks "
                            f"with a head; --task generate trains the LM on the completions")
        from ..tasks.generative import GenerativeConfig, finetune_generate

        config = GenerativeConfig(**_fields(GenerativeConfig, values))
        summary = finetune_generate(config, show_progress=not quiet, say=say)
    else:
        if given & set(GENERATE_OPTIONS):
            raise Gpt1Error(f"--{sorted(given & set(GENERATE_OPTIONS))[0].replace('_', '-')} applies to --task generate")
        from ..tasks.finetune import FinetuneConfig, finetune as run_finetune

        config = FinetuneConfig(**_fields(FinetuneConfig, values))
        summary = run_finetune(config, show_progress=not quiet, say=say)
    if world_from_env().rank != 0:
        return
    best = summary["best"]
    figure = f"{best:.4f}" if isinstance(best, float) and math.isfinite(best) else str(best)
    done = "finished already: " if summary.get("already_finished") else ""
    Console(soft_wrap=True).print(f"{summary['task']}: {done}best val {summary['metric']} {figure} (step {summary['best_step']}) "
                    f"after {summary['steps']} steps ({summary['seconds']} s); checkpoint in {out}/checkpoints")


def _fields(config_class, values: dict) -> dict:
    """The config's fields from the option values (paths as strings, as a saved config has them)."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {name: (str(value) if isinstance(value, Path) else value) for name, value in values.items() if name in names}
