"""`gpt1 paper`: the paper's benchmarks by name, from their published files.

``gpt1 paper tasks`` lists them; ``gpt1 paper finetune NAME`` and ``gpt1 paper eval NAME`` fine-tune
and score one; ``gpt1 paper suite glue|nli|qa|all`` runs every task whose data is present and
prints the paper's tables beside its figures. Registered in ``cli/app.py``'s ``COMMANDS`` as
``Entry("paper_cmd", "app")``; ``gpt1 finetune``/``gpt1 eval`` with ``--data-dir`` route here too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .. import settings
from ..errors import Gpt1Error, interrupt_leaves
from ..progress import console as make_console
from ..tasks.data import ALL_TASKS
from ..tasks.finetune import FinetuneConfig
from ..tasks.outputs import check_output, is_stdout, write_json
from ..tasks.paper.registry import METRIC_NAMES, PAPER_DEFAULTS, SUITES, TABLES, TASKS
from .options import device_option, setting_option

app = typer.Typer(name="paper", help="The paper's benchmarks by name: read their published files, fine-tune, "
                  "evaluate, and print Tables 2-4 beside the paper's figures.", no_args_is_help=True,
                  add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})

_TASK_NAMES = ", ".join(t.name for t in TASKS)
PAPER = "the task's: the paper's"


def _override(name: str, help: str | None = None):
    """An option of FinetuneConfig's setting ``name`` that, left out, keeps the task's (paper) value."""
    if name in PAPER_DEFAULTS:
        shown = f"{PAPER} {PAPER_DEFAULTS[name]:g}"
    else:
        field = next(f for f in settings.fields(FinetuneConfig) if f.name == name)
        declared = settings.declared(field).show_default
        shown = str(field.default) if declared is True else declared
    changes = {"show_default": shown}
    if help:
        changes["help"] = help
    return setting_option(FinetuneConfig, name, default=None, **changes)


def _overrides(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


@app.command("tasks")
def tasks() -> None:
    """List the named tasks: kind, metrics, the paper's figures, and where and how each dataset's files are laid out."""
    table = Table(title="the paper's benchmarks")
    for column in ("name", "table", "kind", "metric", "scored split", "paper"):
        table.add_column(column)
    ordered = sorted(TASKS, key=lambda t: t.table)
    for task in ordered:
        metric = ", ".join(METRIC_NAMES[m] for m in task.metrics)
        figures = ", ".join(f"{s.row} {s.paper:.1f}" for s in task.scores)
        scored = ", ".join(dict.fromkeys(p for s in task.scores for p in s.parts))
        table.add_row(task.name, str(task.table), task.kind + (" (regression)" if task.regression else ""), metric,
                      scored, figures)
    console = make_console()
    console.print(table)
    console.print("Layouts (--data-dir is the task's folder; under a suite's --data-root, the first folder named):")
    for task in ordered:
        console.print(f"  {task.name}: ROOT/{' or ROOT/'.join(task.folders[:2])}; {task.layout}; from {task.source}",
                      markup=False)
    console.print("Suites: " + "; ".join(f"{name}: {', '.join(names)}" for name, names in SUITES.items()), markup=False)
    console.print("Fine-tuning: the paper's settings (" + ", ".join(f"{k} {v:g}" for k, v in PAPER_DEFAULTS.items())
                  + "); GLUE tasks select the checkpoint on a hold-out of train and score dev (test labels are not "
                  "published).", markup=False)


@app.command("finetune")
def finetune(
    name: str = typer.Argument(..., help=f"The task: {_TASK_NAMES}."),
    data_dir: Path = typer.Option(..., help="The task's folder in its published layout (see gpt1 paper tasks)."),
    from_run: Path = typer.Option(..., "--from", help="Pre-trained checkpoint or run directory."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (the converted data go to OUT/paper-data/)."),
    lr: Optional[float] = _override("lr"),
    batch_size: Optional[int] = _override("batch_size"),
    epochs: Optional[int] = _override("epochs"),
    warmup_fraction: Optional[float] = _override("warmup_fraction"),
    lm_coef: Optional[float] = _override("lm_coef"),
    head_dropout: Optional[float] = _override("head_dropout"),
    init: Optional[str] = _override("init"),
    eval_every: Optional[int] = _override("eval_every"),
    seed: Optional[int] = _override("seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its training state."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
    device: str = device_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fine-tune a pre-trained run on a named benchmark with the paper's settings and input transformation."""
    from ..tasks.paper import finetune_named

    notes = make_console(stderr=True)
    summary = finetune_named(name, data_dir, from_run, out, show_progress=not quiet,
                             say=lambda message: notes.print(message, markup=False),
                             **_overrides(lr=lr, batch_size=batch_size, epochs=epochs, warmup_fraction=warmup_fraction,
                                          lm_coef=lm_coef, head_dropout=head_dropout, init=init, eval_every=eval_every,
                                          seed=seed, device=device),
                             **({"resume": True} if resume else {}), **({"overwrite": True} if overwrite else {}))
    print_finetuned(summary, out, data_dir)


def print_finetuned(summary: dict, out, data_dir) -> None:
    """The line a benchmark's fine-tuning ends with (``gpt1 paper finetune``, ``gpt1 finetune --data-dir``)."""
    best = summary["best"]
    figure = f"{best:.4f}" if isinstance(best, float) and math.isfinite(best) else str(best)
    counts = summary["examples"]
    make_console().print(
        f"{summary['name']}: best val {summary['metric']} {figure} (step {summary['best_step']}) after "
        f"{summary['steps']} steps on {counts['train']} examples ({counts['val']} held for selection, "
        f"{summary['seconds']} s); checkpoint in {out}/checkpoints; score it with gpt1 eval --task {summary['name']} "
        f"--data-dir {data_dir} --ckpt {out}", markup=False)


def is_benchmark(name: str | None) -> bool:
    """Whether ``name`` names one of the paper's benchmarks (not a task kind such as entail)."""
    from ..tasks.paper.registry import BY_KEY
    from ..tasks.paper.readers import key

    return name is not None and name not in ALL_TASKS and key(name) in BY_KEY


def task_rule(value, name):
    """Rule of ``--task`` on finetune and eval: a task kind, or a paper benchmark's name (with --data-dir)."""
    if value in ALL_TASKS or is_benchmark(value):
        return value
    raise Gpt1Error(f"unknown task {value!r}; choose one of {', '.join(ALL_TASKS)}, or a paper benchmark with "
                    f"--data-dir: {_TASK_NAMES}")


@app.command("eval")
def eval_(
    name: str = typer.Argument(..., help=f"The task: {_TASK_NAMES}."),
    data_dir: Path = typer.Option(..., help="The task's folder in its published layout."),
    ckpt: Path = typer.Option(..., help="The fine-tuned run (gpt1 paper finetune --out)."),
    split: Optional[str] = typer.Option(None, help="Score this split only (e.g. dev, test, test-middle).",
                                        show_default="the rows the paper reports"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here (- for "
                                            "standard output; the table then goes to standard error).",
                                            show_default="none"),
    overwrite: bool = typer.Option(False, help="Replace an existing --json file."),
    device: str = device_option(),
) -> None:
    """Score a fine-tuned run on a named benchmark with the paper's metric, beside the paper's figure."""
    from ..tasks.paper import evaluate_named

    check_output(json_out, overwrite)
    with interrupt_leaves("evaluation stopped before its results were written"):
        result = evaluate_named(name, data_dir, ckpt, split, device=device)
    print_scored(result, json_out)


def print_scored(result: dict, json_out) -> None:
    """A benchmark's score table (``gpt1 paper eval``, ``gpt1 eval --data-dir``) and its --json."""
    from ..tasks.paper.suite import finite, percent

    console = make_console(stderr=is_stdout(json_out))
    table = Table(title=f"{result['title']} ({TABLES[result['table']]})")
    for column in ("row", "metric", "ours", "paper", "others", "examples"):
        table.add_column(column, justify="left" if column in ("row", "metric", "others") else "right")
    for row in result["rows"]:
        others = ", ".join(f"{METRIC_NAMES.get(m, m)} {percent(v)}" for m, v in row["shown"].items() if m != row["metric"])
        table.add_row(row["row"], METRIC_NAMES[row["metric"]], percent(row["score"]),
                      "-" if row["paper"] is None else f"{row['paper']:.1f}", others, str(row["examples"]))
    console.print(table)
    if json_out is not None:
        write_json(json_out, finite(result))


@app.command("suite")
def suite(
    which: str = typer.Argument(..., help=f"The suite: {', '.join(SUITES)}."),
    data_root: Path = typer.Option(..., help="The folder holding each dataset's published folder (see gpt1 paper tasks)."),
    ckpt_dir: Path = typer.Option(..., help="Runs go to (or, without --from, are read from) CKPT_DIR/NAME."),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Fine-tune each task from this pre-trained run "
                                            "first.", show_default="evaluate the runs already in --ckpt-dir"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write everything as JSON here (- for "
                                            "standard output; the tables then go to standard error).",
                                            show_default="none"),
    lr: Optional[float] = _override("lr"),
    batch_size: Optional[int] = _override("batch_size"),
    epochs: Optional[int] = _override("epochs"),
    init: Optional[str] = _override("init"),
    seed: Optional[int] = _override("seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue runs in --ckpt-dir from their training state."),
    overwrite: bool = typer.Option(False, help="Replace runs already in --ckpt-dir and an existing --json file."),
    device: str = device_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes."),
) -> None:
    """Fine-tune (with --from) and evaluate every task of a suite whose data is under --data-root; print the
    paper's tables with its figures beside ours. Missing datasets are listed as missing; a failed task is
    reported and the others still run (the command then exits 2)."""
    from ..tasks.paper import run_suite

    check_output(json_out, overwrite)
    overrides = _overrides(lr=lr, batch_size=batch_size, epochs=epochs, init=init, seed=seed)
    if from_run is None and (overrides or resume):
        raise Gpt1Error(f"--{sorted(overrides)[0].replace('_', '-') if overrides else 'resume'} applies to "
                        "fine-tuning: add --from RUN")
    notes = make_console(stderr=True)
    with interrupt_leaves("the suite stopped; finished runs stay in --ckpt-dir"):
        result = run_suite(which, data_root, ckpt_dir, from_run=from_run, finetune=from_run is not None, device=device,
                           show_progress=not quiet, log=None if quiet else (lambda m: notes.print(m, markup=False)),
                           **overrides, **({"resume": True} if resume else {}),
                           **({"overwrite": True} if overwrite and from_run is not None else {}))
    print_suite(result, json_out)


def print_suite(result: dict, json_out) -> None:
    """A suite's tables with the missing datasets named, its --json, and one error if a task failed
    (``gpt1 paper suite``, ``gpt1 eval --suite``)."""
    from ..tasks.paper import render_tables
    from ..tasks.paper.suite import finite

    console = make_console(stderr=is_stdout(json_out))
    render_tables(result, console)
    if result["missing"] or result["not_fine_tuned"]:
        console.print(f"missing data: {', '.join(result['missing']) or 'none'}; "
                      f"no checkpoint: {', '.join(result['not_fine_tuned']) or 'none'}", markup=False)
    if json_out is not None:
        write_json(json_out, finite(result))
    if result["failed"]:
        first = next(t for t in result["tasks"] if t["status"] == "failed")
        raise Gpt1Error(f"{len(result['failed'])} of {len(result['tasks'])} tasks failed ({', '.join(result['failed'])}); "
                        f"{first['name']}: {first['error']}")
