"""`gpt1 eval` reporting: progress lines (silenced by -q), --batch-size that never changes a
figure, the fine-tuned table's chance, majority-class and standard-error columns, and the
provenance every --json result carries."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

import gpt1cli
from gpt1cli.fileio import file_hash
from support import (assert_ok, assert_one_error_line, classify_examples, finetuned, latest_folder, mcq_examples,
                     read_jsonl, run_main, task_file, write_task_jsonl)

CPU = torch.device("cpu")


def eval_json(capsys, *argv):
    """Run ``gpt1 eval ARGV --json -`` and return (the result, its JSON)."""
    result = assert_ok(run_main(["eval", *argv, "--json", "-", "--device", "cpu"], capsys))
    return result, json.loads(result.out)


def without_provenance(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "provenance"}


# ---------------------------------------------------------------------------------------------
# --batch-size: the same figures whatever it is


def test_lm_eval_figures_do_not_depend_on_the_batch_size(assets, capsys):
    reports = [eval_json(capsys, "--ckpt", assets.run, "--shards", assets.shards, "--batch-size", size, "-q")[1]
               for size in (1, 3, 8)]
    assert reports[0]["tokens"] > 3 * 32  # several windows of the 32-token context: batches of 1, 3 and 8 differ
    for report in reports[1:]:  # the same up to float32 rounding in the matrix products (which block
        # shapes the batch size changes); the sum itself does not depend on the grouping
        assert report["tokens"] == reports[0]["tokens"]
        for key in ("loss", "ppl", "bpb"):
            assert report[key] == pytest.approx(reports[0][key], rel=1e-7)
    assert [r["provenance"]["settings"]["batch_size"] for r in reports] == [1, 3, 8]

    texts = [eval_json(capsys, "--ckpt", assets.run, "--text", assets.corpus, "--max-tokens", 300, "--batch-size",
                       size, "-q")[1] for size in (1, 5)]
    assert texts[0]["tokens"] == texts[1]["tokens"] == 300
    assert texts[1]["loss"] == pytest.approx(texts[0]["loss"], rel=1e-7)


def test_task_eval_figures_do_not_depend_on_the_batch_size(task_assets, capsys):
    run = finetuned(task_assets, "entail")
    test = task_file(task_assets, "entail", "test")
    reports = [without_provenance(eval_json(capsys, "--ckpt", run, "--task", "entail", "--data", test,
                                            "--batch-size", size, "-q")[1]) for size in (1, 5, 16)]
    assert reports[0] == reports[1] == reports[2]
    assert reports[0]["examples"] == 16


def test_zero_and_few_shot_figures_do_not_depend_on_the_batch_size(task_assets, tmp_path, capsys):
    mcq = write_task_jsonl(tmp_path / "mcq.jsonl", mcq_examples(10, seed=4))
    zero = [without_provenance(eval_json(capsys, "--ckpt", task_assets.run, "--task", "mcq", "--data", mcq,
                                         "--zero-shot", "--batch-size", size, "-q")[1]) for size in (1, 4, 64)]
    assert zero[0] == zero[1] == zero[2]
    classify = write_task_jsonl(tmp_path / "classify.jsonl", classify_examples(8, seed=4))
    few = [without_provenance(eval_json(capsys, "--ckpt", task_assets.run, "--task", "classify", "--data", classify,
                                        "--shots", "0,2", "--batch-size", size, "-q")[1]) for size in (1, 3)]
    assert few[0] == few[1]
    assert [row["shots"] for row in few[0]["results"]] == [0, 2]


def test_batched_scoring_equals_the_shared_prefix_scorer(task_assets):
    from gpt1cli.model.loading import model_from_checkpoint
    from gpt1cli.tasks.fewshot import score_batched, score_candidates
    from gpt1cli.tokenizer import load_tokenizer

    model, checkpoint = model_from_checkpoint(task_assets.run, CPU)
    tok = load_tokenizer(checkpoint.tokenizer_path)
    queries = [(tok.encode(row["context"]), [tok.encode(c) for c in row["choices"]]) for row in mcq_examples(4, seed=9)]
    items = [(context, candidate) for context, candidates in queries for candidate in candidates]
    expected = [s for context, candidates in queries for s in score_candidates(model, context, candidates, CPU, tok.pad_id)]
    for size in (1, 5):
        assert score_batched(model, items, CPU, tok.pad_id, size) == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_a_bad_batch_size_is_one_error_line(value, task_assets, capsys):
    result = run_main(["eval", "--ckpt", task_assets.run, "--task", "classify", "--data",
                       task_file(task_assets, "classify", "test"), "--batch-size", value, "--device", "cpu"], capsys)
    if value == "x":  # not a number: click's usage error
        assert result.code == 2 and "--batch-size" in result.err and "Traceback" not in result.err
    else:
        assert_one_error_line(result, "--batch-size")


def test_batch_size_is_refused_for_generate(task_assets, tmp_path, capsys):
    data = write_task_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "the cat", "completion": "sat"}])
    result = run_main(["eval", "--ckpt", task_assets.run, "--task", "generate", "--data", data, "--batch-size", "4",
                       "--device", "cpu"], capsys)
    assert_one_error_line(result, "--batch-size", "generate")


# ---------------------------------------------------------------------------------------------
# Progress: plain lines on a stream that is not a terminal, nothing with -q


@pytest.mark.parametrize("mode", ["shards", "head", "zero-shot"])
def test_progress_lines_unless_quiet(mode, assets, task_assets, tmp_path, capsys):
    if mode == "shards":
        argv, words = ["--ckpt", assets.run, "--shards", assets.shards], "evaluating the val split"
    elif mode == "head":
        argv = ["--ckpt", finetuned(task_assets, "classify"), "--task", "classify", "--data",
                task_file(task_assets, "classify", "test")]
        words = "evaluating"
    else:
        argv = ["--ckpt", task_assets.run, "--task", "mcq", "--data",
                write_task_jsonl(tmp_path / "mcq.jsonl", mcq_examples(5, seed=1)), "--zero-shot"]
        words = "scoring answers"
    loud = assert_ok(run_main(["eval", *argv, "--device", "cpu"], capsys))
    assert words in loud.err
    assert "evaluation" in loud.out  # the table, on standard output
    quiet = assert_ok(run_main(["eval", *argv, "--device", "cpu", "-q"], capsys))
    assert quiet.err == ""
    assert "evaluation" in quiet.out


# ---------------------------------------------------------------------------------------------
# The fine-tuned table: chance, majority class, standard error


def table_row(out: str, metric: str) -> list[str]:
    line = next(line for line in out.splitlines() if re.match(rf"^[│┃] {metric}\s", line))
    return [cell.strip() for cell in re.split("[│┃]", line.strip().strip("│┃"))]


def test_fine_tuned_table_shows_chance_majority_and_standard_error(task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "classify")
    # a tiny known case: 3 pos and 1 neg, so chance (uniform, two classes) is 0.5 and always
    # answering the majority class "pos" scores 0.75
    rows = [r for r in read_jsonl(task_file(task_assets, "classify", "test")) if r["label"] == "pos"][:3]
    rows += [r for r in read_jsonl(task_file(task_assets, "classify", "test")) if r["label"] == "neg"][:1]
    data = write_task_jsonl(tmp_path / "four.jsonl", rows)
    out = tmp_path / "report.json"
    result = assert_ok(run_main(["eval", "--ckpt", run, "--task", "classify", "--data", data, "--json", out,
                                 "--device", "cpu", "-q"], capsys))
    report = json.loads(out.read_text())
    predicted = read_jsonl(_predict(capsys, run, data, tmp_path / "p.jsonl"))
    accuracy = sum(p["label"] == r["label"] for p, r in zip(predicted, rows)) / 4
    assert report["accuracy"] == accuracy
    assert report["accuracy_stderr"] == pytest.approx(math.sqrt(accuracy * (1 - accuracy) / 4))
    assert report["chance"] == 0.5 and report["majority"] == 0.75 and report["majority_label"] == "pos"

    header = table_row(result.out, "metric")
    assert header == ["metric", "value", "± s.e.", "chance", "majority class"]
    assert table_row(result.out, "accuracy") == ["accuracy", f"{accuracy:.4f}",
                                                 f"{math.sqrt(accuracy * (1 - accuracy) / 4):.4f}", "0.5000",
                                                 "0.7500 (pos)"]
    assert table_row(result.out, "mcc")[2:] == ["", "", ""]  # a standard error only for the accuracy


def _predict(capsys, run, data, out):
    assert_ok(run_main(["predict", "--ckpt", run, "--data", data, "--out", out, "--device", "cpu", "-q"], capsys))
    return out


def test_zero_and_few_shot_reports_carry_the_standard_error_and_baselines(task_assets, tmp_path, capsys):
    rows = mcq_examples(6, seed=2)
    data = write_task_jsonl(tmp_path / "mcq.jsonl", rows)
    result, report = eval_json(capsys, "--ckpt", task_assets.run, "--task", "mcq", "--data", data, "--zero-shot", "-q")
    n = 6
    assert report["accuracy_stderr"] == pytest.approx(math.sqrt(report["accuracy"] * (1 - report["accuracy"]) / n))
    counts = [sum(r["label"] == k for r in rows) for k in range(3)]
    assert report["chance"] == pytest.approx(1 / 3)
    assert report["majority"] == max(counts) / n and report["majority_label"] == counts.index(max(counts))
    assert "± s.e." in result.err and "majority class" in result.err  # with --json - the table is on stderr

    _, few = eval_json(capsys, "--ckpt", task_assets.run, "--task", "mcq", "--data", data, "--shots", "0,1", "-q")
    for row in few["results"]:
        assert row["accuracy_stderr"] == pytest.approx(math.sqrt(row["accuracy"] * (1 - row["accuracy"]) / n))
    assert few["majority"] == report["majority"]
    assert few["results"][0]["accuracy"] == report["accuracy"]


# ---------------------------------------------------------------------------------------------
# Provenance of --json


def check_provenance(block: dict, run: Path, data: list[Path], before: datetime) -> None:
    folder = latest_folder(Path(run)).resolve()
    meta = json.loads((folder / "checkpoint.json").read_text())
    assert block["command"] == "gpt1 eval" and block["gpt1_version"] == gpt1cli.__version__
    assert block["checkpoint"]["path"] == str(folder)
    assert block["checkpoint"]["step"] == meta["step"]
    assert block["checkpoint"]["weights_blake2b"] == meta["weights_blake2b"]
    assert [d["path"] for d in block["data"]] == [str(Path(p).resolve()) for p in data]
    for entry, path in zip(block["data"], data):
        assert entry["bytes"] == Path(path).stat().st_size and entry["blake2b"] == file_hash(path)
        assert entry["modified"] == datetime.fromtimestamp(Path(path).stat().st_mtime, timezone.utc).isoformat(
            timespec="seconds").replace("+00:00", "Z")
    created = datetime.fromisoformat(block["created"].replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= created <= datetime.now(timezone.utc)


def test_json_results_say_what_produced_them(assets, task_assets, tmp_path, capsys):
    before = datetime.now(timezone.utc)
    run = finetuned(task_assets, "classify")
    test = task_file(task_assets, "classify", "test")
    _, head = eval_json(capsys, "--ckpt", run, "--task", "classify", "--data", test, "--batch-size", 4, "-q")
    check_provenance(head["provenance"], run, [test], before)
    assert head["provenance"]["checkpoint"]["task"] == "classify"
    assert head["provenance"]["settings"] == {"device": "cpu", "task": "classify", "mode": "head", "batch_size": 4}

    _, lm = eval_json(capsys, "--ckpt", assets.run, "--shards", assets.shards, "--max-tokens", 100, "-q")
    check_provenance(lm["provenance"], assets.run, [assets.shards / "manifest.json"], before)
    assert lm["provenance"]["settings"] == {"device": "cpu", "mode": "lm", "split": "val", "batch_size": 8,
                                            "max_tokens": 100}
    assert lm["provenance"]["checkpoint"]["task"] is None

    pool = write_task_jsonl(tmp_path / "pool.jsonl", classify_examples(6, seed=5))
    data = write_task_jsonl(tmp_path / "q.jsonl", classify_examples(4, seed=6))
    out = tmp_path / "few.json"
    assert_ok(run_main(["eval", "--ckpt", task_assets.run, "--task", "classify", "--data", data, "--shots", "1",
                        "--shots-from", pool, "--seed", "3", "--json", out, "--device", "cpu", "-q"], capsys))
    few = json.loads(out.read_text())
    check_provenance(few["provenance"], task_assets.run, [data, pool], before)
    settings = few["provenance"]["settings"]
    assert settings["mode"] == "few-shot" and settings["shots"] == [1] and settings["seed"] == 3
    assert settings["batch_size"] == 16 and settings["template"] == few["template"]


def test_generate_json_has_provenance_and_exact_match_error(task_assets, tmp_path, capsys):
    before = datetime.now(timezone.utc)
    data = write_task_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "the old farmer", "completion": "walked"},
                                                      {"prompt": "a young child", "completion": "read"}])
    _, report = eval_json(capsys, "--ckpt", task_assets.run, "--task", "generate", "--data", data,
                          "--max-new-tokens", 3, "-q")
    check_provenance(report["provenance"], task_assets.run, [data], before)
    settings = report["provenance"]["settings"]
    assert settings["mode"] == "generate" and settings["beams"] == 1 and settings["max_new_tokens"] == 3
    e = report["exact"]
    assert report["exact_stderr"] == pytest.approx(math.sqrt(e * (1 - e) / 2))
