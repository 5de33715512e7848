"""`gpt1 finetune`: adapt a pre-trained run to a labelled task with one linear head, or to a generative task."""

from __future__ import annotations

import math

import typer
from rich.console import Console

from ..errors import Gpt1Error
from ..settings import declared, names, option_name
from ..tasks.finetune import FinetuneConfig
from ..tasks.finetune import finetune as run_finetune
from ..tasks.generative import GenerativeConfig, finetune_generate
from ..tasks.training import saved_settings
from ..train.distributed import world_from_env
from .options import Options, command, offered

# Settings of one task kind only: giving one with the other kind is an error.
HEAD_ONLY = sorted(set(names(FinetuneConfig)) - set(names(GenerativeConfig)) - {"task"})
GENERATE_ONLY = sorted(set(names(GenerativeConfig)) - set(names(FinetuneConfig)))
# Required, but --resume may take them from the run.
NEEDED = [field.name for _, field in offered(FinetuneConfig, GenerativeConfig) if declared(field).resume_fills]


@command(FinetuneConfig, GenerativeConfig)
def finetune(
    options: Options,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune with the paper's input transformations and loss L3 = L2 + lambda * L1, or (--task
    generate) on prompt/completion pairs with the LM loss on the completion. Ctrl-C or SIGTERM
    stops at the next step with a resumable state (exit 75); --resume continues it."""
    values, given = dict(options.values), options.given
    out = values["out"]
    saved = saved_settings(out) if values["resume"] else None
    if saved is not None:
        # The run's own settings stand in for every option not given; the library refuses changes.
        values.update({name: value for name, value in saved["config"].items() if name in values and name not in given})
        if "task" not in given:
            values["task"] = saved["task"]
    missing = [option_name(FinetuneConfig, name) for name in NEEDED if values[name] is None]
    if missing:
        reason = (f" ({out} holds no training state to resume from yet, so the run starts anew)" if values["resume"] else "")
        raise Gpt1Error(f"finetune needs {', '.join(missing)}{reason}")
    notes = Console(stderr=True, soft_wrap=True, highlight=False)
    say = (lambda message: notes.print(message, markup=False)) if world_from_env().rank == 0 else (lambda message: None)
    if values["task"] == "generate":
        if given & set(HEAD_ONLY):
            raise Gpt1Error(f"{option_name(FinetuneConfig, sorted(given & set(HEAD_ONLY))[0])} applies to the tasks "
                            f"with a head; --task generate trains the LM on the completions")
        summary = finetune_generate(options.config(GenerativeConfig, **values), show_progress=not quiet, say=say)
    else:
        if given & set(GENERATE_ONLY):
            raise Gpt1Error(f"{option_name(GenerativeConfig, sorted(given & set(GENERATE_ONLY))[0])} applies to --task "
                            "generate")
        summary = run_finetune(options.config(FinetuneConfig, **values), show_progress=not quiet, say=say)
    if world_from_env().rank != 0:
        return
    best = summary["best"]
    figure = f"{best:.4f}" if isinstance(best, float) and math.isfinite(best) else str(best)
    done = "finished already: " if summary.get("already_finished") else ""
    Console(soft_wrap=True).print(f"{summary['task']}: {done}best val {summary['metric']} {figure} (step {summary['best_step']}) "
                    f"after {summary['steps']} steps ({summary['seconds']} s); checkpoint in {out}/checkpoints")

