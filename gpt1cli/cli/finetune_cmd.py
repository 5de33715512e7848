"""`gpt1 finetune`: adapt a pre-trained run to a labelled task with one linear head, or to a generative task."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import Gpt1Error
from ..progress import console
from ..settings import declared, names, option_name, setting
from ..tasks.finetune import FinetuneConfig
from ..tasks.finetune import finetune as run_finetune
from ..tasks.generative import GenerativeConfig, finetune_generate
from ..tasks.training import saved_settings
from ..train.distributed import world_from_env
from ..train.memory import human_bytes
from .options import Options, command, offered
from .paper_cmd import is_benchmark, task_rule

@dataclass(kw_only=True)
class FinetuneCommand(FinetuneConfig):
    """The command line's view of a head task's settings: --task also takes a paper benchmark's name,
    whose files --data-dir holds (the benchmark picks the files, fields, metric and recipe)."""

    task: str = setting(help="classify, entail, similar, mcq, or generate (prompt/completion pairs, no head); or a "
                        "paper benchmark with --data-dir (gpt1 paper tasks lists them). Required, except with "
                        "--resume.", rule=task_rule, show_default="none", resume_fills=True)


# What a benchmark (--data-dir) chooses itself: giving one of these with it is an error.
BENCHMARK_CHOOSES = ("train", "val", "fields", "regression", "metric")

# Settings of one task kind only: giving one with the other kind is an error.
HEAD_ONLY = sorted(set(names(FinetuneConfig)) - set(names(GenerativeConfig)) - {"task"})
GENERATE_ONLY = sorted(set(names(GenerativeConfig)) - set(names(FinetuneConfig)))
# Required, but --resume may take them from the run.
NEEDED = [field.name for _, field in offered(FinetuneConfig, GenerativeConfig) if declared(field).resume_fills]


@command(FinetuneCommand, GenerativeConfig)
def finetune(
    options: Options,
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="With --task BENCHMARK (e.g. story-cloze, "
                                            "mnli, sst-2): the dataset's folder in its published layout; the paper's "
                                            "recipe, input transformation and splits follow from the name.",
                                            show_default="none"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the settings and files, print the parameters, FLOPs "
                                 "per token, memory estimate, examples, steps and settings, and exit without writing "
                                 "anything."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or progress lines."),
) -> None:
    """Fine-tune with the paper's input transformations and loss L3 = L2 + lambda * L1, or (--task
    generate) on prompt/completion pairs with the LM loss on the completion. Ctrl-C or SIGTERM
    stops at the next step with a resumable state (exit 75); --resume continues it."""
    values, given = dict(options.values), options.given
    if data_dir is not None or is_benchmark(values["task"]):
        return _finetune_benchmark(values, given, data_dir, dry_run, quiet)
    values["dry_run"] = dry_run
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
    say = _notes()
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
    out_console = console()
    if summary.get("dry_run"):
        _print_plan(out_console, summary)
        return
    best = summary["best"]
    figure = f"{best:.4f}" if isinstance(best, float) and math.isfinite(best) else str(best)
    done = "finished already: " if summary.get("already_finished") else ""
    early = (f"; stopped early at step {summary['stopped_early']} (--patience)"
             if summary.get("stopped_early") is not None else "")
    overflows = f"; {summary['overflow_steps']} fp16 overflow steps skipped" if summary.get("overflow_steps") else ""
    out_console.print(escape(
        f"{summary['task']}: {done}best val {summary['metric']} {figure} (step {summary['best_step']}) after "
        f"{summary['steps']} steps ({summary['seconds']} s){early}{overflows}; checkpoints in {out}/checkpoints "
        f"(best: step {summary['best_step']}, latest: step {summary.get('last_step')})"))


def _notes():
    """How the run's notes are said: on standard error by rank 0, not at all by the other ranks."""
    if world_from_env().rank != 0:
        return lambda message: None
    notes = console(stderr=True)
    return lambda message: notes.print(message, markup=False)


def _finetune_benchmark(values: dict, given: set, data_dir: Path | None, dry_run: bool, quiet: bool) -> None:
    """``--task BENCHMARK --data-dir DIR``: the benchmark's files, read in their layout, with the paper's recipe."""
    from ..tasks.paper import finetune_named
    from ..tasks.paper.named import OVERRIDABLE
    from .paper_cmd import print_finetuned

    task = values["task"]
    if not is_benchmark(task):
        raise Gpt1Error(f"--data-dir reads a paper benchmark's published files: give its name with --task (not "
                        f"{task!r}); gpt1 paper tasks lists them")
    if data_dir is None:
        raise Gpt1Error(f"--task {task} is a paper benchmark: give its folder (in the published layout) with --data-dir")
    chosen = sorted(given & set(BENCHMARK_CHOOSES)) + (["dry_run"] if dry_run else [])
    if chosen:
        raise Gpt1Error(f"{option_name(FinetuneConfig, chosen[0]) if chosen[0] != 'dry_run' else '--dry-run'} does "
                        f"not apply to a paper benchmark: --task {task} picks its files, fields, metric and recipe")
    missing = [flag for name, flag in (("from_run", "--from"), ("out", "--out")) if values[name] is None]
    if missing:
        raise Gpt1Error(f"finetune --task {task} needs {', '.join(missing)}")
    say = _notes()
    overrides = {name: values[name] for name in OVERRIDABLE if name in given or name in ("resume", "overwrite", "device")}
    summary = finetune_named(task, data_dir, values["from_run"], values["out"], show_progress=not quiet, say=say,
                             **overrides)
    if world_from_env().rank == 0:
        print_finetuned(summary, values["out"], data_dir)


def _print_plan(out: Console, plan: dict) -> None:
    """The dry run's report: what the run would be and cost."""
    memory = plan["memory"]
    estimate, available = memory["estimate"], memory["available"]
    fits = available is None or memory["needed"] <= available
    examples = ", ".join(f"{count:,} {name.removesuffix('_examples')}" for name, count in plan["examples"].items())
    lines = [
        f"dry run: nothing written ({plan['out']} untouched)",
        f"task             {plan['task']}" + (" (resumed from its training state)" if plan["resumed"] else ""),
        f"parameters       {plan['parameters']:,}",
        f"FLOPs per token  {plan['flops_per_token']:.4g} (6 x parameters + 12 x layers x d_model x n_ctx, forward and backward)",
        f"memory estimate  {human_bytes(estimate.total)} per process: {human_bytes(estimate.state)} weights, gradients and "
        f"AdamW state, {human_bytes(estimate.activations)} activations of a batch at full context",
        f"memory available {human_bytes(available) if available is not None else 'unknown'} on {plan['device']}: "
        + ("fits" if fits else "does NOT fit"),
        f"examples         {examples}",
        f"steps            {plan['start_step']} -> {plan['steps']} ({plan['epochs']} epochs of {plan['steps_per_epoch']} "
        f"steps of {plan['batch_size']} examples; warm-up {plan['warmup_steps']} steps; evaluation every "
        f"{plan['eval_every']} steps)",
        f"precision        {plan['precision']}",
        f"kernels          {plan['kernels']}",
        f"from             {plan['from']}",
        "model            " + ", ".join(f"{k}={v}" for k, v in plan["model"].items()),
        "settings         " + ", ".join(f"{k}={v}" for k, v in plan["config"].items()),
    ]
    for line in lines:
        out.print(escape(line))

