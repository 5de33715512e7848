"""`gpt1 paper`: every named benchmark fine-tuned and scored end to end on a tiny model from tiny
files in its published layout (``test_paper_readers.write_layouts``), the suites' tables with
missing datasets marked, and bad input as one error line.

The command is reached through the real ``main`` (its error handling and exit codes) with the
``paper`` sub-app mounted on a local Typer app, so these tests do not depend on its registration.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import typer

import support
from support import assert_ok, assert_one_error_line, read_jsonl, run_main, strip_ansi
from test_paper_readers import write_layouts

from gpt1cli.tasks.paper import find_folder, get_task
from gpt1cli.tasks.paper.registry import TASKS, hold_out

TINY = ["--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu"]


@pytest.fixture
def cli(monkeypatch):
    """``gpt1 paper ...`` through the real ``main``."""
    monkeypatch.setenv("NO_COLOR", "1")
    return lambda argv, capsys: run_main(["paper", *argv], capsys)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_layouts(tmp_path_factory.mktemp("paper-data"))


def records(expected):
    return [{**fields, "label": label} for fields, label in expected]


def without_source(rows):
    return [{k: v for k, v in row.items() if k != "source"} for row in rows]


def expected_rest_held(layouts, name, split, fraction=None):
    rows = records(layouts.expected[(name, split)])
    held = hold_out(len(rows), fraction)
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


@pytest.mark.parametrize("name", [t.name for t in TASKS])
def test_named_task_end_to_end(name, layouts, task_assets, cli, tmp_path, capsys):
    from gpt1cli.tasks.head_eval import evaluate_task

    task = get_task(name)
    folder = find_folder(task, layouts.root)
    out = tmp_path / "run"
    result = assert_ok(cli(["finetune", name, "--data-dir", folder, "--from", task_assets.run, "--out", out, *TINY,
                            "--quiet"], capsys))
    assert f"{name}: best val" in result.out and f"checkpoint in {out}/checkpoints" in result.out

    # The converted data: the fit split less the hold-out, and the selection split, in our JSONL fields.
    fit, _, part = task.fit.partition(":")
    val, _, val_part = task.val.partition(":")
    fraction = 0.2 if name == "story-cloze" else None
    if part:
        train_rows, val_rows = expected_rest_held(layouts, name, fit, fraction)
    else:
        train_rows, val_rows = records(layouts.expected[(name, fit)]), records(layouts.expected[(name, val)])
    assert without_source(read_jsonl(out / "paper-data" / "train.jsonl")) == train_rows
    assert without_source(read_jsonl(out / "paper-data" / "val.jsonl")) == val_rows
    record = json.loads((out / "paper-task.json").read_text())
    assert record["name"] == name and record["examples"] == {"train": len(train_rows), "val": len(val_rows)}
    assert record["settings"] == {"batch_size": 4, "device": "cpu", "epochs": 1, "head_dropout": 0.1, "lm_coef": 0.5,
                                  "lr": 1e-3, "warmup_fraction": 0.002}
    meta = support.checkpoint_meta(out)
    assert meta["task"]["name"] == task.kind and meta["task"]["regression"] == task.regression
    assert meta["task"]["metric"] == task.select
    steps = [r for r in support.read_metrics(out) if r["kind"] == "train"]
    assert len(steps) == math.ceil(len(train_rows) / 4)

    json_out = tmp_path / "scores.json"
    result = assert_ok(cli(["eval", name, "--data-dir", folder, "--ckpt", out, "--json", json_out, "--device", "cpu"],
                           capsys))
    scores = json.loads(json_out.read_text())
    assert [row["row"] for row in scores["rows"]] == [s.row for s in task.scores]
    assert [row["paper"] for row in scores["rows"]] == [s.paper for s in task.scores]
    text = strip_ansi(result.out)
    for row in scores["rows"]:
        assert re.search(rf"{re.escape(row['row'])}\s.*{row['paper']:.1f}", text), text
    # Each row equals the ordinary evaluation of the same examples written by hand as our JSONL.
    for row, score in zip(scores["rows"], task.scores):
        expected = [r for part_ in score.parts for r in records(layouts.expected[(name, part_)])]
        assert row["examples"] == len(expected)
        data = support.write_task_jsonl(tmp_path / f"{row['row']}.jsonl", expected)
        plain = evaluate_task(out, task.kind, data, "cpu")
        if task.regression:
            assert row["score"] == pytest.approx(plain["pearson"], nan_ok=True)
            assert row["metrics"]["spearman"] == pytest.approx(plain["spearman"], nan_ok=True)
        else:
            assert row["confusion"] == plain["confusion"]
            assert row["metrics"]["accuracy"] == pytest.approx(plain["accuracy"])
            assert row["metrics"]["mcc"] == pytest.approx(plain["mcc"])
            if task.positive is not None:
                m = np.asarray(plain["confusion"])
                positive = [str(x) for x in plain["labels"]].index("1")
                tp = m[positive, positive]
                f1 = 2 * tp / (m[positive].sum() + m[:, positive].sum()) if tp else 0.0
                assert row["score"] == pytest.approx(f1) and row["metric"] == "f1"
            else:
                assert row["score"] == pytest.approx(plain[task.metrics[0]])


def test_race_rows_pool_middle_and_high(layouts, task_assets, tmp_path):
    from gpt1cli.tasks.paper import evaluate_named, finetune_named

    folder = layouts.root / "RACE"
    out = tmp_path / "race"
    summary = finetune_named("race", folder, task_assets.run, out, epochs=1, batch_size=8, lr=1e-3, device="cpu")
    assert summary["examples"] == {"train": 12, "val": 8} and summary["name"] == "race"
    rows = {r["row"]: r for r in evaluate_named("RACE", folder, out, device="cpu")["rows"]}
    m, h, both = rows["RACE-m"], rows["RACE-h"], rows["RACE"]
    assert (m["examples"], h["examples"], both["examples"]) == (4, 4, 8)
    assert both["confusion"] == (np.asarray(m["confusion"]) + np.asarray(h["confusion"])).tolist()
    assert both["score"] == pytest.approx((m["score"] * 4 + h["score"] * 4) / 8)
    one = evaluate_named("race", folder, out, split="dev-high", device="cpu")["rows"]
    assert [(r["row"], r["paper"], r["examples"]) for r in one] == [("RACE dev-high", None, 4)]
    # the same data again: resuming the finished run reports it; other data is refused without overwrite
    again = finetune_named("race", folder, task_assets.run, out, epochs=1, batch_size=8, lr=1e-3, device="cpu",
                           resume=True)
    assert again["already_finished"] and again["steps"] == summary["steps"]
    from gpt1cli.errors import Gpt1Error

    before = (out / "paper-data" / "train.jsonl").read_bytes()
    with pytest.raises(Gpt1Error, match="holds a run trained on other train data"):
        finetune_named("snli", layouts.root / "snli_1.0", task_assets.run, out, epochs=1, device="cpu")
    assert (out / "paper-data" / "train.jsonl").read_bytes() == before  # the run's data are left as they were


def suite_root(tmp_path, only):
    return write_layouts(tmp_path / "data", only=only).root


def test_suite_fine_tunes_what_is_there_and_marks_the_rest_missing(task_assets, cli, tmp_path, capsys):
    root = suite_root(tmp_path, ("cola", "mrpc", "sts-b", "story-cloze"))
    ckpts, json_out = tmp_path / "runs", tmp_path / "all.json"
    result = assert_ok(cli(["suite", "all", "--data-root", root, "--ckpt-dir", ckpts, "--from", task_assets.run,
                            "--json", json_out, *TINY, "--quiet"], capsys))
    text = strip_ansi(result.out)
    for title in ("Table 2: natural language inference", "Table 3: question answering",
                  "Table 4: semantic similarity and classification"):
        assert title in text
    data = json.loads(json_out.read_text())
    status = {t["name"]: t["status"] for t in data["tasks"]}
    assert status == {"mnli": "missing", "snli": "missing", "scitail": "missing", "qnli": "missing", "rte": "missing",
                      "story-cloze": "done", "race": "missing", "cola": "done", "sst-2": "missing", "mrpc": "done",
                      "sts-b": "done", "qqp": "missing"}
    assert data["missing"] == ["mnli", "snli", "scitail", "qnli", "rte", "race", "sst-2", "qqp"] and data["failed"] == []
    race = next(t for t in data["tasks"] if t["name"] == "race")
    assert race["expected"] == [str(root / "RACE")]
    for row in ("MNLI-m", "MNLI-mm", "SNLI", "SciTail", "QNLI", "RTE", "RACE-m", "RACE-h", "SST-2", "QQP"):
        assert re.search(rf"│ {re.escape(row)}\s+│.*│\s+-\s+│.*missing", text), row
    cola = next(t for t in data["tasks"] if t["name"] == "cola")["rows"][0]
    assert re.search(rf"│ CoLA\s+│ mc\s+│\s+{100 * cola['score']:.1f} │\s+45.4 │ acc {100 * cola['metrics']['accuracy']:.1f}",
                     text), text
    glue = data["glue"]
    assert glue["tasks"] == ["cola", "mrpc", "sts-b"] and glue["paper"] == 72.8
    by = {t["name"]: t["rows"][0]["metrics"] for t in data["tasks"] if t["status"] == "done"}
    parts = [by["cola"]["mcc"], (by["mrpc"]["f1"] + by["mrpc"]["accuracy"]) / 2]
    if by["sts-b"]["pearson"] is not None and by["sts-b"]["spearman"] is not None:
        parts.append((by["sts-b"]["pearson"] + by["sts-b"]["spearman"]) / 2)
        assert glue["score"] == pytest.approx(sum(parts) / 3)
    assert re.search(r"│ GLUE\s+│ score\s+│.*72.8 │ 3 of 8 tasks, no WNLI", text)

    # Evaluating the same runs again (no --from) gives the same figures; a run-less task is "not fine-tuned".
    (root / "glue" / "RTE").mkdir(parents=True)
    json2 = tmp_path / "glue.json"
    result = assert_ok(cli(["suite", "glue", "--data-root", root, "--ckpt-dir", ckpts, "--json", json2,
                            "--device", "cpu", "--quiet"], capsys))
    again = json.loads(json2.read_text())
    assert {t["name"]: t["status"] for t in again["tasks"]} == {
        "cola": "done", "sst-2": "missing", "mrpc": "done", "sts-b": "done", "qqp": "missing", "mnli": "missing",
        "qnli": "missing", "rte": "not fine-tuned"}
    assert [t["rows"] for t in again["tasks"] if t["name"] == "cola"] == [t["rows"] for t in data["tasks"] if t["name"] == "cola"]
    assert "Table 3" not in strip_ansi(result.out) and "no checkpoint: rte" in strip_ansi(result.out)


def test_suite_reports_a_failed_task_and_runs_the_others(task_assets, cli, tmp_path, capsys):
    root = suite_root(tmp_path, ("snli", "rte"))
    bad = root / "glue" / "RTE" / "train.tsv"
    bad.write_text(bad.read_text().replace("not_entailment", "maybe", 1))
    result = cli(["suite", "nli", "--data-root", root, "--ckpt-dir", tmp_path / "runs", "--from", task_assets.run,
                  *TINY, "--quiet"], capsys)
    line = assert_one_error_line(result, "1 of 5 tasks failed (rte)", f"{bad}:", "label 'maybe' is not one of "
                                 "entailment, not_entailment")
    text = strip_ansi(result.out)
    assert re.search(r"│ SNLI\s+│ acc\s+│\s+\d+\.\d │\s+89.9", text) and "failed:" in text
    assert (tmp_path / "runs" / "snli" / "checkpoints").is_dir() and not (tmp_path / "runs" / "rte").exists()
    assert line


def test_paper_tasks_lists_every_task(cli, capsys):
    text = strip_ansi(assert_ok(cli(["tasks"], capsys)).out)
    for task in TASKS:
        assert re.search(rf"│ {re.escape(task.name)}\s+│ {task.table}\s+│ {task.kind}", text), task.name
        assert f"{task.name}: ROOT/{task.folders[0]}" in text
    assert "MNLI-m 82.1" in text and "RACE-h 57.4" in text


def test_bad_input_is_one_error_line(layouts, task_assets, cli, tmp_path, capsys):
    assert_one_error_line(cli(["finetune", "squad", "--data-dir", tmp_path, "--from", task_assets.run, "--out",
                               tmp_path / "o"], capsys), "unknown paper task 'squad'", "story-cloze")
    (tmp_path / "CoLA").mkdir()
    assert_one_error_line(cli(["finetune", "cola", "--data-dir", tmp_path / "CoLA", "--from", task_assets.run, "--out",
                               tmp_path / "o"], capsys), f"missing {tmp_path / 'CoLA' / 'train.tsv'}")
    assert_one_error_line(cli(["eval", "cola", "--data-dir", layouts.root / "glue" / "CoLA", "--ckpt", tmp_path / "o",
                               "--split", "test", "--device", "cpu"], capsys), "unlabelled")
    assert_one_error_line(cli(["suite", "nlu", "--data-root", tmp_path, "--ckpt-dir", tmp_path], capsys),
                          "unknown suite 'nlu'")
    assert_one_error_line(cli(["suite", "qa", "--data-root", tmp_path, "--ckpt-dir", tmp_path, "--epochs", "2"],
                              capsys), "--epochs applies to fine-tuning: add --from RUN")
    assert_one_error_line(cli(["finetune", "rte", "--data-dir", layouts.root / "glue" / "RTE", "--from",
                               task_assets.run, "--out", tmp_path / "o", "--lr", "-1"], capsys), "--lr")
    # a run of one task scored as another
    from gpt1cli.tasks.paper import finetune_named

    out = tmp_path / "mrpc"
    finetune_named("mrpc", layouts.root / "glue" / "MRPC", task_assets.run, out, epochs=1, batch_size=8, device="cpu")
    assert_one_error_line(cli(["eval", "qqp", "--data-dir", layouts.root / "glue" / "QQP", "--ckpt", out, "--device",
                               "cpu"], capsys), f"{out} was fine-tuned for the paper task mrpc, not qqp")
    assert_one_error_line(cli(["eval", "rte", "--data-dir", layouts.root / "glue" / "RTE", "--ckpt", out, "--device",
                               "cpu"], capsys), "fine-tuned for the paper task mrpc")


@pytest.mark.parametrize("command", ["tasks", "finetune", "eval", "suite"])
def test_help_lists_every_option_with_its_default(command, cli, capsys, monkeypatch):
    from gpt1cli.cli import paper_cmd

    monkeypatch.setenv("COLUMNS", "300")
    result = assert_ok(cli([command, "--help"], capsys))
    text = strip_ansi(result.out)
    click_command = typer.main.get_command(paper_cmd.app).commands[command]
    for param in click_command.params:
        if isinstance(param, typer.core.TyperArgument):
            assert param.name in text
            continue
        row = next((line for line in text.splitlines() if f" {param.opts[0]} " in line), None)
        assert row is not None, f"{command} --help lacks {param.opts[0]}"
        if param.required:
            assert "[required]" in row, row
        elif not param.is_flag:
            assert "[default: " in row, row


def test_class_f1_is_the_positive_class_f1():
    from gpt1cli.tasks.label_metrics import class_f1

    matrix = np.array([[5, 1], [2, 4]])  # rows true, columns predicted; class 1: tp 4, fn 2, fp 1
    assert class_f1(matrix, 1) == pytest.approx(2 * 4 / (2 * 4 + 2 + 1))
    assert class_f1(matrix, 0) == pytest.approx(2 * 5 / (2 * 5 + 1 + 2))
    assert class_f1(np.array([[3, 0], [0, 0]]), 1) == 0.0  # no positive in truth or predictions


@pytest.mark.parametrize("name", ["sst-2", "story-cloze"])
def test_finetune_and_eval_take_a_benchmark_by_name(name, layouts, task_assets, cli, tmp_path, capsys):
    # `gpt1 finetune/eval --task NAME --data-dir DIR` are `gpt1 paper finetune/eval NAME`: same run, same scores.
    folder = find_folder(get_task(name), layouts.root)
    result = assert_ok(run_main(["finetune", "--task", name, "--data-dir", folder, "--from", task_assets.run, "--out",
                                 tmp_path / "top", *TINY, "-q"], capsys))
    assert f"{name}: best val" in result.out
    assert_ok(cli(["finetune", name, "--data-dir", folder, "--from", task_assets.run, "--out", tmp_path / "sub", *TINY,
                   "--quiet"], capsys))
    assert support.checkpoint_meta(tmp_path / "top")["weights_blake2b"] == \
        support.checkpoint_meta(tmp_path / "sub")["weights_blake2b"]
    assert_ok(run_main(["eval", "--task", name, "--data-dir", folder, "--ckpt", tmp_path / "top", "--json",
                        tmp_path / "top.json", "--device", "cpu"], capsys))
    assert_ok(cli(["eval", name, "--data-dir", folder, "--ckpt", tmp_path / "sub", "--json", tmp_path / "sub.json",
                   "--device", "cpu"], capsys))
    top, sub = (json.loads((tmp_path / f"{side}.json").read_text()) for side in ("top", "sub"))
    assert [r["score"] for r in top["rows"]] == [r["score"] for r in sub["rows"]] and top["rows"]
    assert top["rows"][0]["paper"] == get_task(name).scores[0].paper


def test_eval_suite_scores_the_runs_in_ckpt_dir(task_assets, cli, tmp_path, capsys):
    root = suite_root(tmp_path, ("cola",))
    assert_ok(cli(["suite", "glue", "--data-root", root, "--ckpt-dir", tmp_path / "runs", "--from", task_assets.run,
                   "--json", tmp_path / "tuned.json", *TINY, "--quiet"], capsys))
    result = assert_ok(run_main(["eval", "--suite", "glue", "--data-root", root, "--ckpt-dir", tmp_path / "runs",
                                 "--json", tmp_path / "again.json", "--device", "cpu", "-q"], capsys))
    tuned, again = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("tuned", "again"))
    rows = lambda data: [t["rows"] for t in data["tasks"] if t["name"] == "cola"]  # noqa: E731
    assert rows(again) == rows(tuned) and again["missing"] == ["sst-2", "mrpc", "sts-b", "qqp", "mnli", "qnli", "rte"]
    assert "Table 4" in strip_ansi(result.out) and "missing data: sst-2" in strip_ansi(result.out)


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--task", "sst-2", "--from", "r", "--out", "o"], "give its folder (in the published layout) with --data-dir"),
    (["finetune", "--task", "classify", "--data-dir", ".", "--from", "r", "--out", "o"], "give its name with --task"),
    (["finetune", "--task", "sst-2", "--data-dir", ".", "--train", "t.jsonl", "--from", "r", "--out", "o"],
     "--train does not apply to a paper benchmark"),
    (["finetune", "--task", "bogus"], "or a paper benchmark with --data-dir: mnli, snli"),
    (["eval", "--task", "sst-2", "--ckpt", "r"], "give its folder with --data-dir"),
    (["eval", "--suite", "glue", "--data-root", "."], "missing --ckpt-dir"),
    (["eval", "--suite", "nope"], "unknown suite 'nope'; choose one of glue, nli, qa, all"),
    (["eval", "--task", "mrpc", "--data-dir", ".", "--ckpt", "r", "--batch-size", "4"],
     "--batch-size does not apply to the paper's benchmarks"),
])
def test_benchmark_options_are_checked(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_one_error_line(run_main(argv, capsys), message)
