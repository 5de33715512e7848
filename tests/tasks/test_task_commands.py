"""`gpt1 finetune`, `gpt1 eval --task` and `gpt1 predict` end to end, for all four tasks.

Each task is fine-tuned through the CLI on tiny generated data (32 train, 15 val examples,
two steps), then evaluated and predicted on 16 test examples. The checks tie the three outputs
together: the checkpoint's task record, metrics.jsonl, the metrics JSON and predictions.jsonl
must agree with each other and with the data. CSV and Parquet inputs must give exactly the
results of the same examples in JSONL.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from support import (
    FINETUNE_ARGS, assert_ok, assert_one_error_line, checkpoint_meta, finetuned, read_jsonl, run_main,
    run_subprocess, task_file, write_task_csv, write_task_jsonl, write_task_parquet,
)

TASKS = ["classify", "entail", "similar", "similar-reg", "mcq"]


def finetune_cli(capsys, task_assets, task, out, train, val, *extra):
    name = "similar" if task == "similar-reg" else task
    argv = ["finetune", "--task", name, "--train", train, "--val", val, "--from", task_assets.run, "--out", out,
            *FINETUNE_ARGS, *extra]
    if task == "similar-reg":
        argv.append("--regression")
    return assert_ok(run_main(argv, capsys))


def eval_cli(capsys, ckpt, task, data, json_out):
    assert_ok(run_main(["eval", "--ckpt", ckpt, "--task", task, "--data", data, "--json", json_out,
                        "--device", "cpu"], capsys))
    report = json.loads(json_out.read_text(encoding="utf-8"))
    report.pop("provenance")  # which file and when: differs between runs by design
    return report


def predict_cli(capsys, ckpt, data, out):
    result = assert_ok(run_main(["predict", "--ckpt", ckpt, "--data", data, "--out", out, "--device", "cpu"],
                                capsys))
    return result, read_jsonl(out)


def confusion_from(truth: list[int], pred: list[int], n: int) -> list[list[int]]:
    matrix = [[0] * n for _ in range(n)]
    for t, p in zip(truth, pred):
        matrix[t][p] += 1
    return matrix


@pytest.mark.parametrize("task", TASKS)
def test_finetune_eval_predict_agree(task, task_assets, tmp_path, capsys):
    name = "similar" if task == "similar-reg" else task
    regression = task == "similar-reg"
    train, val, test = (task_file(task_assets, task, s) for s in ("train", "val", "test"))
    train_rows, test_rows = read_jsonl(train), read_jsonl(test)
    run = tmp_path / "run"
    finetune_cli(capsys, task_assets, task, run, train, val)

    # --- the checkpoint records the task, its label set and the head's width
    meta = checkpoint_meta(run)
    info = meta["task"]
    assert meta["kind"] == "finetune"
    assert info["name"] == name
    assert info["regression"] is regression
    assert meta["from"].startswith(str(task_assets.run))
    if name == "mcq":
        assert info["labels"] == [] and info["n_outputs"] == 1 and info["n_choices"] == 3
    elif regression:
        assert info["labels"] == [] and info["n_outputs"] == 1 and info["metric"] == "pearson"
    else:
        expected = sorted({r["label"] for r in train_rows})
        assert info["labels"] == expected and all(isinstance(x, str) for x in expected)
        assert info["n_outputs"] == len(expected) >= 2
    from safetensors import safe_open

    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        head = weights.get_tensor("head.weight")
    assert head.shape == (info["n_outputs"], meta["model"]["d_model"])

    # --- metrics.jsonl: a config record, one train record per step, an eval at the epoch's end
    log = read_jsonl(run / "metrics.jsonl")
    config = [r for r in log if r["kind"] == "config"]
    assert len(config) == 1 and config[0]["train_examples"] == 32 and config[0]["val_examples"] == 15
    train_recs = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2]  # 32 examples / batch 16, one epoch
    for r in train_recs:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["loss"] == pytest.approx(r["task_loss"] + 0.5 * r["lm_loss"], rel=1e-5)
    evals = [r for r in log if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2]
    metric = "pearson" if regression else "accuracy"
    assert evals[0][metric] == pytest.approx(meta["metrics"]["val"][metric], nan_ok=True)

    # --- eval --json and predict on the same 16 test examples
    report = eval_cli(capsys, run, name, test, tmp_path / "metrics.json")
    _, preds = predict_cli(capsys, run, test, tmp_path / "preds.jsonl")
    assert len(preds) == len(test_rows) == report["examples"] == 16
    assert report["task"] == name

    if regression:
        assert set(report) >= {"pearson", "spearman", "mse"}
        values = np.array([p["value"] for p in preds])
        truth = np.array([r["label"] for r in test_rows], dtype=float)
        assert report["mse"] == pytest.approx(float(((values - truth) ** 2).mean()), rel=1e-6)
        if values.std() > 0:
            assert report["pearson"] == pytest.approx(float(np.corrcoef(values, truth)[0, 1]), abs=1e-6)
        return

    assert set(report) >= {"accuracy", "macro_f1", "mcc", "confusion"}
    if name == "mcq":
        truth = [r["label"] for r in test_rows]
        pred = [p["label"] for p in preds]
        assert report["labels"] == [0, 1, 2]
        for p in preds:
            assert len(p["probs"]) == 3 and sum(p["probs"]) == pytest.approx(1.0, abs=1e-5)
            assert p["probs"][p["label"]] == max(p["probs"])
    else:
        labels = info["labels"]
        assert report["labels"] == labels
        truth = [labels.index(r["label"]) for r in test_rows]
        pred = [labels.index(p["label"]) for p in preds]
        for p in preds:
            assert list(p["probs"]) == labels
            assert sum(p["probs"].values()) == pytest.approx(1.0, abs=1e-5)
            assert p["probs"][p["label"]] == max(p["probs"].values())
    n = len(report["confusion"])
    assert n == (3 if name in ("mcq", "entail") else 2)
    assert report["confusion"] == confusion_from(truth, pred, n)
    assert report["accuracy"] == pytest.approx(np.mean(np.array(truth) == np.array(pred)))
    # macro-F1 and MCC are those of the predictions written by predict
    from gpt1cli.tasks.label_metrics import classification_report

    again = classification_report(truth, pred, n)
    assert report["macro_f1"] == pytest.approx(again["macro_f1"]) and report["mcc"] == pytest.approx(again["mcc"])


def test_checkpoint_selection_keeps_the_best_epoch(task_assets, tmp_path, capsys):
    """Several evaluations: the best checkpoint (``best``) is the first with the best validation
    accuracy; the last evaluated one (``latest``) is kept beside it, nothing else."""
    run = tmp_path / "run"
    finetune_cli(capsys, task_assets, "classify", run, task_file(task_assets, "classify", "train"),
                 task_file(task_assets, "classify", "val"), "--epochs", "4", "--eval-every", "1", "--batch-size", "8")
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == list(range(1, 17))
    best = max(r["accuracy"] for r in evals)
    first_best = next(r for r in evals if r["accuracy"] == best)
    best_name = (run / "checkpoints" / "best").read_text().strip()
    assert best_name == f"step_{first_best['step']:08d}"
    meta = json.loads((run / "checkpoints" / best_name / "checkpoint.json").read_text(encoding="utf-8"))
    assert meta["step"] == first_best["step"]
    assert meta["metrics"]["val"]["accuracy"] == pytest.approx(best)
    last = checkpoint_meta(run)  # checkpoints/latest: the last evaluation's
    assert last["step"] == 16 and last["metrics"]["val"]["accuracy"] == pytest.approx(evals[-1]["accuracy"])
    # only those two checkpoint folders are kept
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_")) == \
        sorted({best_name, "step_00000016"})


# ---------------------------------------------------------------------------------------------
# CSV and Parquet


def test_classify_from_csv_and_parquet_matches_jsonl(task_assets, tmp_path, capsys):
    rows = read_jsonl(task_file(task_assets, "classify", "train"))
    test_rows = read_jsonl(task_file(task_assets, "classify", "test"))
    train_csv = write_task_csv(tmp_path / "train.csv", rows)
    val_parquet = write_task_parquet(tmp_path / "val.parquet", read_jsonl(task_file(task_assets, "classify", "val")))
    run_csv, run_jsonl = tmp_path / "csv-run", tmp_path / "jsonl-run"
    finetune_cli(capsys, task_assets, "classify", run_csv, train_csv, val_parquet)
    finetune_cli(capsys, task_assets, "classify", run_jsonl, task_file(task_assets, "classify", "train"),
                 task_file(task_assets, "classify", "val"))
    # the same examples in another format train the same model
    assert checkpoint_meta(run_csv)["weights_blake2b"] == checkpoint_meta(run_jsonl)["weights_blake2b"]
    assert checkpoint_meta(run_csv)["task"]["labels"] == ["neg", "pos"]

    reports = {}
    for fmt, path in (("jsonl", task_file(task_assets, "classify", "test")),
                      ("csv", write_task_csv(tmp_path / "test.csv", test_rows)),
                      ("parquet", write_task_parquet(tmp_path / "test.parquet", test_rows))):
        reports[fmt] = eval_cli(capsys, run_csv, "classify", path, tmp_path / f"{fmt}.json")
        _, preds = predict_cli(capsys, run_csv, path, tmp_path / f"{fmt}-preds.jsonl")
        assert len(preds) == 16
        reports[fmt + "-preds"] = preds
    assert reports["csv"] == reports["jsonl"] == reports["parquet"]
    assert reports["csv-preds"] == reports["jsonl-preds"] == reports["parquet-preds"]


@pytest.mark.parametrize("layout", ["choice-columns", "choices-json", "parquet", "label-text"])
def test_mcq_csv_layouts_match_jsonl(layout, task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "mcq")
    test = task_file(task_assets, "mcq", "test")
    rows = read_jsonl(test)
    if layout == "choice-columns":
        path = write_task_csv(tmp_path / "t.csv", rows, choice_columns=True)
        header = path.read_text().splitlines()[0].split(",")
        assert header == ["context", "label", "choice_0", "choice_1", "choice_2"]
    elif layout == "choices-json":
        path = write_task_csv(tmp_path / "t.csv", rows)
    elif layout == "parquet":
        path = write_task_parquet(tmp_path / "t.parquet", rows)
    else:  # the label given as the right choice's text
        path = write_task_csv(tmp_path / "t.csv", [dict(r, label=r["choices"][r["label"]]) for r in rows],
                              choice_columns=True)
    expected = eval_cli(capsys, run, "mcq", test, tmp_path / "jsonl.json")
    assert eval_cli(capsys, run, "mcq", path, tmp_path / "other.json") == expected
    _, preds = predict_cli(capsys, run, path, tmp_path / "preds.jsonl")
    _, jsonl_preds = predict_cli(capsys, run, test, tmp_path / "jsonl-preds.jsonl")
    assert preds == jsonl_preds and len(preds) == 16


def test_mcq_finetunes_from_csv_choice_columns(task_assets, tmp_path, capsys):
    train = write_task_csv(tmp_path / "train.csv", read_jsonl(task_file(task_assets, "mcq", "train")),
                           choice_columns=True)
    val = write_task_csv(tmp_path / "val.csv", read_jsonl(task_file(task_assets, "mcq", "val")))
    finetune_cli(capsys, task_assets, "mcq", tmp_path / "run", train, val)
    assert checkpoint_meta(tmp_path / "run")["task"]["n_choices"] == 3


def test_predict_needs_no_labels_also_in_csv_with_an_empty_label_column(task_assets, tmp_path, capsys):
    """`predict` does not need labels. A CSV export often keeps the label column with empty cells:
    an empty cell is a missing label, not a label ``''``."""
    run = finetuned(task_assets, "mcq")
    rows = [{k: v for k, v in r.items() if k != "label"} for r in read_jsonl(task_file(task_assets, "mcq", "test"))]
    no_column = write_task_csv(tmp_path / "nolabel.csv", rows, choice_columns=True)
    _, expected = predict_cli(capsys, run, no_column, tmp_path / "a.jsonl")
    assert len(expected) == 16
    empty_cells = write_task_csv(tmp_path / "empty.csv", [dict(r, label="") for r in rows], choice_columns=True)
    _, preds = predict_cli(capsys, run, empty_cells, tmp_path / "b.jsonl")
    assert preds == expected


def test_csv_with_an_empty_label_cell_is_a_missing_label(task_assets, tmp_path, capsys):
    """In training data an empty CSV label cell must be reported, not become a class ``''``."""
    rows = read_jsonl(task_file(task_assets, "classify", "train"))
    rows[4] = dict(rows[4], label="")
    train = write_task_csv(tmp_path / "train.csv", rows)
    result = run_main(["finetune", "--task", "classify", "--train", train, "--val",
                       task_file(task_assets, "classify", "val"), "--from", task_assets.run, "--out", tmp_path / "run",
                       *FINETUNE_ARGS], capsys)
    assert_one_error_line(result, f"{train}:6", "label")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_numeric_string_labels_mean_the_same_in_jsonl_and_csv(task_assets, tmp_path, capsys):
    """Labels "0"/"1" trained from JSONL must match the same rows written as CSV (where every cell
    is text): the label set must not depend on the file format."""
    def relabel(rows):
        return [dict(r, label="1" if r["label"] == "pos" else "0") for r in rows]

    train = write_task_jsonl(tmp_path / "train.jsonl", relabel(read_jsonl(task_file(task_assets, "classify", "train"))))
    val = write_task_jsonl(tmp_path / "val.jsonl", relabel(read_jsonl(task_file(task_assets, "classify", "val"))))
    test_rows = relabel(read_jsonl(task_file(task_assets, "classify", "test")))
    run = tmp_path / "run"
    finetune_cli(capsys, task_assets, "classify", run, train, val)
    expected = eval_cli(capsys, run, "classify", write_task_jsonl(tmp_path / "t.jsonl", test_rows), tmp_path / "a.json")
    got = eval_cli(capsys, run, "classify", write_task_csv(tmp_path / "t.csv", test_rows), tmp_path / "b.json")
    assert got == expected


# ---------------------------------------------------------------------------------------------
# The real process


def test_python_m_gpt1cli_eval_and_predict(task_assets, tmp_path, capsys):
    """`python -m gpt1cli`: eval writes the same JSON as in-process, predict exits 0, errors exit 2."""
    run = finetuned(task_assets, "entail")
    test = task_file(task_assets, "entail", "test")
    expected = eval_cli(capsys, run, "entail", test, tmp_path / "inproc.json")
    result = run_subprocess(["eval", "--ckpt", run, "--task", "entail", "--data", test,
                             "--json", tmp_path / "sub.json", "--device", "cpu"])
    assert result.code == 0, result.err
    sub = json.loads((tmp_path / "sub.json").read_text())
    assert sub.pop("provenance")["command"] == "gpt1 eval"
    assert sub == expected
    assert "accuracy" in result.out and "confusion" in result.out
    for label in ("contradiction", "entailment", "neutral"):
        assert label in result.out  # the confusion matrix is labelled with the label set

    bad = run_subprocess(["predict", "--ckpt", task_assets.run, "--data", test, "--out", tmp_path / "p.jsonl",
                          "--device", "cpu"])
    assert_one_error_line(bad, str(task_assets.run), "without a task head")
    assert not (tmp_path / "p.jsonl").exists()
