"""Suites of the paper's benchmarks: fine-tune or evaluate every task whose data is present under
a data root, and lay the results out as the paper's Tables 2, 3 and 4 beside its figures.

Under ROOT each dataset keeps its published folder (the first that exists of each task's
``folders``): ``ROOT/multinli_1.0`` or ``ROOT/glue/MNLI``, ``ROOT/snli_1.0``, ``ROOT/SciTailV1.1``,
``ROOT/ROCStories``, ``ROOT/RACE``, ``ROOT/glue/{CoLA,SST-2,MRPC,STS-B,QQP,QNLI,RTE}`` (``glue_data/``
works too). A task without its folder is reported as missing, not as a failure; so is one without
a checkpoint in ``CKPT_DIR/NAME`` when only evaluating. A task that fails is reported with its
error and the others still run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from ...errors import Gpt1Error
from .named import evaluate_named, finetune_named
from .registry import GLUE_FIGURE, METRIC_NAMES, SUITES, TABLES, find_folder, get_task

DONE, MISSING, NO_CHECKPOINT, FAILED = "done", "missing", "not fine-tuned", "failed"

# The GLUE score: per task the mean of these metrics (MNLI: of matched and mismatched), averaged
# over the tasks. The paper's 72.8 also counts WNLI, which is not run here.
GLUE_METRICS = {"cola": ("mcc",), "sst-2": ("accuracy",), "mrpc": ("f1", "accuracy"), "sts-b": ("pearson", "spearman"),
                "qqp": ("f1", "accuracy"), "mnli": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",)}


def run_suite(suite: str, data_root: str | Path, ckpt_dir: str | Path, *, from_run: str | Path | None = None,
              finetune: bool = False, device: str = "auto", show_progress: bool = False,
              log: Callable[[str], None] | None = None, **overrides) -> dict:
    """Fine-tune (``finetune``, from ``from_run``) into ``CKPT_DIR/NAME`` and evaluate, or only
    evaluate the checkpoints there, every task of ``suite`` (glue, nli, qa or all) whose folder
    exists under ``data_root``. ``overrides`` go to :func:`finetune_named`."""
    if suite not in SUITES:
        raise Gpt1Error(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    root, ckpts = Path(data_root), Path(ckpt_dir)
    if not root.is_dir():
        raise Gpt1Error(f"the data root {root} is not a folder")
    if finetune and from_run is None:
        raise Gpt1Error("fine-tuning a suite needs a pre-trained run (--from RUN)")
    log = log or (lambda message: None)
    tasks = []
    for name in SUITES[suite]:
        task = get_task(name)
        entry = {"name": task.name, "title": task.title, "table": task.table, "folder": None, "status": None,
                 "rows": [], "error": None}
        tasks.append(entry)
        folder = find_folder(task, root)
        if folder is None:
            entry.update(status=MISSING, expected=[str(root / f) for f in task.folders])
            log(f"{task.title}: missing (no {' or '.join(str(root / f) for f in task.folders)})")
            continue
        entry["folder"] = str(folder)
        out = ckpts / task.name
        try:
            if finetune:
                log(f"{task.title}: fine-tuning on {folder} into {out}")
                summary = finetune_named(task.name, folder, from_run, out, device=device, show_progress=show_progress,
                                         say=log, **overrides)
                entry["finetune"] = {k: summary.get(k) for k in ("steps", "metric", "best", "best_step", "seconds",
                                                                 "examples", "dropped")}
            elif not out.exists():
                entry.update(status=NO_CHECKPOINT, expected=[str(out)])
                log(f"{task.title}: no checkpoint in {out}")
                continue
            log(f"{task.title}: evaluating {out}")
            entry["rows"] = evaluate_named(task.name, folder, out, device=device)["rows"]
            entry["status"] = DONE
        except Gpt1Error as exc:
            entry.update(status=FAILED, error=str(exc))
            log(f"{task.title}: failed: {exc}")
    result = {"suite": suite, "data_root": str(root), "ckpt_dir": str(ckpts), "finetune": finetune,
              "from_run": None if from_run is None else str(from_run), "tasks": tasks}
    if any(get_task(t["name"]).glue for t in tasks):
        result["glue"] = glue_score(tasks)
    for listed, status in (("missing", MISSING), ("not_fine_tuned", NO_CHECKPOINT), ("failed", FAILED)):
        result[listed] = [t["name"] for t in tasks if t["status"] == status]
    return result


def glue_score(tasks: list[dict]) -> dict:
    """The mean GLUE task score over the GLUE tasks that ran (see :data:`GLUE_METRICS`)."""
    scores = {}
    for entry in tasks:
        metrics = GLUE_METRICS.get(entry["name"])
        if metrics is None or entry["status"] != DONE:
            continue
        per_row = [sum(row["metrics"][m] for m in metrics) / len(metrics) for row in entry["rows"]]
        scores[entry["name"]] = sum(per_row) / len(per_row)
    value = sum(scores.values()) / len(scores) if scores else None
    return {"score": value, "tasks": sorted(scores), "of": len(GLUE_METRICS), "paper": GLUE_FIGURE,
            "note": "WNLI is not run; the paper's score includes it"}


def finite(obj):
    """``obj`` with NaN and infinities as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# The paper's tables


def percent(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{100 * value:.1f}"


def table_rows(result: dict) -> dict[int, list[dict]]:
    """Per table, its rows as shown: task, metric, ours, paper, other metrics, examples, status."""
    tables: dict[int, list[dict]] = {}
    for entry in result["tasks"]:
        task = get_task(entry["name"])
        metric = METRIC_NAMES[task.metrics[0]]
        if entry["status"] == DONE:
            for row in entry["rows"]:
                others = ", ".join(f"{METRIC_NAMES.get(m, m)} {percent(v)}" for m, v in row["shown"].items()
                                   if m != row["metric"])
                tables.setdefault(task.table, []).append(
                    {"task": row["row"], "metric": metric, "ours": percent(row["score"]),
                     "paper": "-" if row["paper"] is None else f"{row['paper']:.1f}", "others": others,
                     "examples": str(row["examples"]), "status": DONE})
        else:
            status = entry["status"] if entry["status"] != FAILED else f"failed: {entry['error']}"
            for score in task.scores:
                tables.setdefault(task.table, []).append(
                    {"task": score.row, "metric": metric, "ours": "-", "paper": f"{score.paper:.1f}", "others": "",
                     "examples": "-", "status": status})
    if "glue" in result and 4 in tables:
        glue = result["glue"]
        n = len(glue["tasks"])
        tables[4].append({"task": "GLUE", "metric": "score", "ours": percent(glue["score"]),
                          "paper": f"{glue['paper']:.1f}", "others": f"{n} of {glue['of']} tasks, no WNLI",
                          "examples": "-", "status": DONE if n == glue["of"] else ("partial" if n else MISSING)})
    return dict(sorted(tables.items()))


COLUMNS = ("task", "metric", "ours", "paper", "others", "examples", "status")


def render_tables(result: dict, console) -> None:
    """Print the paper's tables (rich) for the suite's tasks, ours beside the paper's figures."""
    from rich.table import Table

    for number, rows in table_rows(result).items():
        table = Table(title=f"{TABLES[number]} ({'fine-tuned and evaluated' if result['finetune'] else 'evaluated'})")
        for column in COLUMNS:
            table.add_column(column, justify="right" if column in ("ours", "paper", "examples") else "left",
                             overflow="fold")
        for row in rows:
            table.add_row(*(row[c] for c in COLUMNS))
        console.print(table)
