"""Bad input to finetune / eval --task / predict: one `error:` line naming the culprit (file and
line or row where there is one), exit code 2, no traceback, and no fine-tuned checkpoint left."""

from __future__ import annotations

import pytest

from support import (
    FINETUNE_ARGS, assert_one_error_line, checkpoint_meta, finetuned, mcq_examples, read_jsonl, run_main, task_file,
    task_file_with, write_task_csv, write_task_jsonl, write_task_parquet,
)


def finetune(capsys, task_assets, task, train, val, out, *extra):
    return run_main(["finetune", "--task", task, "--train", train, "--val", val, "--from", task_assets.run,
                     "--out", out, *FINETUNE_ARGS, *extra], capsys)


def evaluate(capsys, ckpt, task, data, *extra):
    return run_main(["eval", "--ckpt", ckpt, "--task", task, "--data", data, "--device", "cpu", *extra], capsys)


def assert_no_run(out):
    assert not (out / "checkpoints").exists(), "a failed finetune left a checkpoint"


# ---------------------------------------------------------------------------------------------
# Task files


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_missing_field_names_file_and_line(fmt, task_assets, tmp_path, capsys):
    rows = read_jsonl(task_file(task_assets, "entail", "train"))
    rows[2] = {"premise": rows[2]["premise"], "label": rows[2]["label"]}  # no hypothesis
    if fmt == "jsonl":
        path, where = write_task_jsonl(tmp_path / "t.jsonl", rows), "t.jsonl:3"
    elif fmt == "csv":  # the column exists; this row leaves it short
        path = tmp_path / "t.csv"
        lines = ["premise,hypothesis,label"] + [f"{r['premise']},{r.get('hypothesis', '')},{r['label']}" for r in rows]
        lines[3] = f"{rows[2]['premise']}"  # a row with one cell: hypothesis and label missing
        path.write_text("\n".join(lines) + "\n")
        where = "t.csv:4"
    else:
        path, where = write_task_parquet(tmp_path / "t.parquet", rows), "t.parquet row 3"
    out = tmp_path / "run"
    line = assert_one_error_line(finetune(capsys, task_assets, "entail", path, task_file(task_assets, "entail", "val"), out),
                                 str(tmp_path), where, "hypothesis")
    assert "missing" in line
    assert_no_run(out)


def test_missing_label_names_file_and_line(task_assets, tmp_path, capsys):
    rows = read_jsonl(task_file(task_assets, "classify", "train"))
    del rows[5]["label"]
    path = write_task_jsonl(tmp_path / "t.jsonl", rows)
    assert_one_error_line(finetune(capsys, task_assets, "classify", path, path, tmp_path / "run"),
                          f"{path}:6", "label")


def test_val_label_not_seen_in_training(task_assets, tmp_path, capsys):
    path = task_file_with(task_assets, "classify", "val", tmp_path / "val.jsonl", 7, label="maybe")
    out = tmp_path / "run"
    assert_one_error_line(finetune(capsys, task_assets, "classify", task_file(task_assets, "classify", "train"), path, out),
                          f"{path}:8", "'maybe'", "not seen in training")
    assert_no_run(out)


def test_eval_label_not_seen_in_training(task_assets, tmp_path, capsys):
    path = task_file_with(task_assets, "entail", "test", tmp_path / "t.jsonl", 3, label="unknown")
    json_out = tmp_path / "m.json"
    assert_one_error_line(evaluate(capsys, finetuned(task_assets, "entail"), "entail", path, "--json", json_out),
                          f"{path}:4", "'unknown'", "not seen in training")
    assert not json_out.exists()


def test_mcq_example_with_one_choice(task_assets, tmp_path, capsys):
    choices = read_jsonl(task_file(task_assets, "mcq", "test"))[9]["choices"]
    path = task_file_with(task_assets, "mcq", "test", tmp_path / "t.jsonl", 9, choices=choices[:1], label=0)
    assert_one_error_line(evaluate(capsys, finetuned(task_assets, "mcq"), "mcq", path), f"{path}:10", "at least 2 choices")


def test_mcq_mixed_choice_counts(task_assets, tmp_path, capsys):
    choices = read_jsonl(task_file(task_assets, "mcq", "train"))[12]["choices"]
    path = task_file_with(task_assets, "mcq", "train", tmp_path / "t.jsonl", 12, choices=choices[:2], label=0)
    out = tmp_path / "run"
    assert_one_error_line(finetune(capsys, task_assets, "mcq", path, task_file(task_assets, "mcq", "val"), out),
                          f"{path}:13", "2 choices", "3")
    assert_no_run(out)


def test_mcq_mixed_choice_counts_in_csv_columns(task_assets, tmp_path, capsys):
    rows = read_jsonl(task_file(task_assets, "mcq", "test"))
    path = write_task_csv(tmp_path / "t.csv", rows, choice_columns=True)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ","  # the 5th example loses choice_2
    path.write_text("\n".join(lines) + "\n")
    assert_one_error_line(evaluate(capsys, finetuned(task_assets, "mcq"), "mcq", path), f"{path}:6", "2 choices")


def test_mcq_data_with_another_choice_count_than_the_checkpoint(task_assets, tmp_path, capsys):
    path = write_task_jsonl(tmp_path / "t.jsonl", mcq_examples(6, 9, n_choices=4))
    assert_one_error_line(evaluate(capsys, finetuned(task_assets, "mcq"), "mcq", path), str(path), "4 choices", "3")


def test_mcq_label_out_of_range(task_assets, tmp_path, capsys):
    path = task_file_with(task_assets, "mcq", "test", tmp_path / "t.jsonl", 0, label=3)
    assert_one_error_line(evaluate(capsys, finetuned(task_assets, "mcq"), "mcq", path), f"{path}:1", "label 3")


@pytest.mark.parametrize("kind", ["jsonl", "blank-jsonl", "csv-header-only"])
def test_empty_task_file(kind, task_assets, tmp_path, capsys):
    if kind == "jsonl":
        path = tmp_path / "t.jsonl"
        path.write_text("")
    elif kind == "blank-jsonl":
        path = tmp_path / "t.jsonl"
        path.write_text("\n  \n\n")
    else:
        path = tmp_path / "t.csv"
        path.write_text("text,label\n")
    out = tmp_path / "run"
    assert_one_error_line(finetune(capsys, task_assets, "classify", path, task_file(task_assets, "classify", "val"), out),
                          str(path), "no examples")
    assert_no_run(out)
    assert_one_error_line(run_main(["predict", "--ckpt", finetuned(task_assets, "classify"), "--data", path,
                                    "--out", tmp_path / "p.jsonl", "--device", "cpu"], capsys), str(path))
    assert not (tmp_path / "p.jsonl").exists()


def test_malformed_json_line(task_assets, tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    lines = task_file(task_assets, "classify", "test").read_text().splitlines()
    lines[2] = lines[2][:-3]
    path.write_text("\n".join(lines) + "\n")
    assert_one_error_line(evaluate(capsys, finetuned(task_assets, "classify"), "classify", path), f"{path}:3", "JSON")


def test_one_label_only_cannot_train_a_classifier(task_assets, tmp_path, capsys):
    rows = [r for r in read_jsonl(task_file(task_assets, "classify", "train")) if r["label"] == "pos"]
    path = write_task_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "run"
    assert_one_error_line(finetune(capsys, task_assets, "classify", path, path, out), str(path), "one label")
    assert_no_run(out)


def test_regression_with_a_non_numeric_label(task_assets, tmp_path, capsys):
    path = task_file_with(task_assets, "similar-reg", "train", tmp_path / "t.jsonl", 10, label="high")
    out = tmp_path / "run"
    result = finetune(capsys, task_assets, "similar", path, task_file(task_assets, "similar-reg", "val"), out, "--regression")
    assert_one_error_line(result, f"{path}:11", "--regression", "'high'")
    assert_no_run(out)


def test_regression_only_for_similar(task_assets, tmp_path, capsys):
    result = finetune(capsys, task_assets, "classify", task_file(task_assets, "classify", "train"),
                      task_file(task_assets, "classify", "val"), tmp_path / "run", "--regression")
    assert_one_error_line(result, "--regression", "similar")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_eval_with_another_task_than_the_checkpoint(task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "mcq")
    json_out = tmp_path / "m.json"
    line = assert_one_error_line(evaluate(capsys, run, "classify", task_file(task_assets, "classify", "test"),
                                          "--json", json_out), str(run), "mcq", "classify")
    assert "fine-tuned" in line
    assert not json_out.exists()


def test_zero_shot_needs_mcq(task_assets, capsys):
    result = evaluate(capsys, task_assets.run, "classify", task_file(task_assets, "classify", "test"), "--zero-shot")
    assert_one_error_line(result, "--zero-shot", "mcq")


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_pretrained_checkpoint_has_no_head(command, task_assets, tmp_path, capsys):
    data = task_file(task_assets, "classify", "test")
    if command == "eval":
        result = evaluate(capsys, task_assets.run, "classify", data)
    else:
        result = run_main(["predict", "--ckpt", task_assets.run, "--data", data, "--out", tmp_path / "p.jsonl",
                           "--device", "cpu"], capsys)
    assert_one_error_line(result, str(task_assets.run), "without a task head")
    assert not (tmp_path / "p.jsonl").exists()


def test_finetune_from_a_finetuned_checkpoint(task_assets, tmp_path, capsys):
    source = finetuned(task_assets, "classify")
    out = tmp_path / "run"
    result = run_main(["finetune", "--task", "classify", "--train", task_file(task_assets, "classify", "train"),
                       "--val", task_file(task_assets, "classify", "val"), "--from", source, "--out", out,
                       *FINETUNE_ARGS], capsys)
    assert_one_error_line(result, str(source), "already fine-tuned", "pre-trained")
    assert_no_run(out)


def test_out_dir_already_holds_a_run(task_assets, tmp_path, capsys):
    existing = finetuned(task_assets, "classify")
    before = checkpoint_meta(existing)
    log_before = (existing / "metrics.jsonl").read_bytes()
    result = finetune(capsys, task_assets, "classify", task_file(task_assets, "classify", "train"),
                      task_file(task_assets, "classify", "val"), existing)
    assert_one_error_line(result, str(existing), "already holds a run")
    assert checkpoint_meta(existing) == before
    assert (existing / "metrics.jsonl").read_bytes() == log_before  # untouched


def test_task_file_not_found_and_unknown_task(task_assets, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert_one_error_line(evaluate(capsys, finetuned(task_assets, "classify"), "classify", missing), str(missing))
    result = finetune(capsys, task_assets, "summarise", task_file(task_assets, "classify", "train"),
                      task_file(task_assets, "classify", "val"), tmp_path / "run")
    assert_one_error_line(result, "summarise")


def test_f1_selection_needs_two_labels_and_a_head_task(task_assets, tmp_path, capsys):
    labels = {r["label"] for r in read_jsonl(task_file(task_assets, "entail", "train"))}
    assert len(labels) == 3
    result = finetune(capsys, task_assets, "entail", task_file(task_assets, "entail", "train"),
                      task_file(task_assets, "entail", "val"), tmp_path / "e", "--metric", "f1")
    assert_one_error_line(result, "--metric f1 is the F1 of a two-label task's positive class", "has 3 labels")
    assert_no_run(tmp_path / "e")
    result = finetune(capsys, task_assets, "mcq", task_file(task_assets, "mcq", "train"),
                      task_file(task_assets, "mcq", "val"), tmp_path / "m", "--metric", "f1")
    assert_one_error_line(result, "mcq scores choices: use accuracy")
