"""Bad input to finetune / eval --task / predict: one `error:` line naming the culprit (file and
line or row where there is one), exit code 2, no traceback, and no fine-tuned checkpoint left."""

from __future__ import annotations

import pytest

import task_helpers as th
from task_helpers import single_thread_module  # noqa: F401  (autouse)


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    return th.task_assets(tmp_path_factory)


def finetune(capsys, assets, task, train, val, out, *extra):
    return th.run_main(["finetune", "--task", task, "--train", train, "--val", val, "--from", assets.run,
                        "--out", out, *th.FINETUNE_ARGS, *extra], capsys)


def evaluate(capsys, ckpt, task, data, *extra):
    return th.run_main(["eval", "--ckpt", ckpt, "--task", task, "--data", data, "--device", "cpu", *extra], capsys)


def assert_no_run(out):
    assert not (out / "checkpoints").exists(), "a failed finetune left a checkpoint"


# ---------------------------------------------------------------------------------------------
# Task files


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_missing_field_names_file_and_line(fmt, assets, tmp_path, capsys):
    rows = th.read_jsonl(th.task_file(assets, "entail", "train"))
    rows[2] = {"premise": rows[2]["premise"], "label": rows[2]["label"]}  # no hypothesis
    if fmt == "jsonl":
        path, where = th.write_task_jsonl(tmp_path / "t.jsonl", rows), "t.jsonl:3"
    elif fmt == "csv":  # the column exists; this row leaves it short
        path = tmp_path / "t.csv"
        lines = ["premise,hypothesis,label"] + [f"{r['premise']},{r.get('hypothesis', '')},{r['label']}" for r in rows]
        lines[3] = f"{rows[2]['premise']}"  # a row with one cell: hypothesis and label missing
        path.write_text("\n".join(lines) + "\n")
        where = "t.csv:4"
    else:
        path, where = th.write_task_parquet(tmp_path / "t.parquet", rows), "t.parquet row 3"
    out = tmp_path / "run"
    line = th.assert_one_error_line(finetune(capsys, assets, "entail", path, th.task_file(assets, "entail", "val"), out),
                                    str(tmp_path), where, "hypothesis")
    assert "missing" in line
    assert_no_run(out)


def test_missing_label_names_file_and_line(assets, tmp_path, capsys):
    rows = th.read_jsonl(th.task_file(assets, "classify", "train"))
    del rows[5]["label"]
    path = th.write_task_jsonl(tmp_path / "t.jsonl", rows)
    th.assert_one_error_line(finetune(capsys, assets, "classify", path, path, tmp_path / "run"),
                             f"{path}:6", "label")


def test_val_label_not_seen_in_training(assets, tmp_path, capsys):
    val = th.read_jsonl(th.task_file(assets, "classify", "val"))
    val[7] = dict(val[7], label="maybe")
    path = th.write_task_jsonl(tmp_path / "val.jsonl", val)
    out = tmp_path / "run"
    th.assert_one_error_line(finetune(capsys, assets, "classify", th.task_file(assets, "classify", "train"), path, out),
                             f"{path}:8", "'maybe'", "not seen in training")
    assert_no_run(out)


def test_eval_label_not_seen_in_training(assets, tmp_path, capsys):
    rows = th.read_jsonl(th.task_file(assets, "entail", "test"))
    rows[3] = dict(rows[3], label="unknown")
    path = th.write_task_jsonl(tmp_path / "t.jsonl", rows)
    json_out = tmp_path / "m.json"
    th.assert_one_error_line(evaluate(capsys, th.finetuned(assets, "entail"), "entail", path, "--json", json_out),
                             f"{path}:4", "'unknown'", "not seen in training")
    assert not json_out.exists()


def test_mcq_example_with_one_choice(assets, tmp_path, capsys):
    rows = th.read_jsonl(th.task_file(assets, "mcq", "test"))
    rows[9] = dict(rows[9], choices=rows[9]["choices"][:1], label=0)
    path = th.write_task_jsonl(tmp_path / "t.jsonl", rows)
    th.assert_one_error_line(evaluate(capsys, th.finetuned(assets, "mcq"), "mcq", path), f"{path}:10", "at least 2 choices")


def test_mcq_mixed_choice_counts(assets, tmp_path, capsys):
    rows = th.read_jsonl(th.task_file(assets, "mcq", "train"))
    rows[12] = dict(rows[12], choices=rows[12]["choices"][:2], label=0)
    path = th.write_task_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "run"
    th.assert_one_error_line(finetune(capsys, assets, "mcq", path, th.task_file(assets, "mcq", "val"), out),
                             f"{path}:13", "2 choices", "3")
    assert_no_run(out)


def test_mcq_mixed_choice_counts_in_csv_columns(assets, tmp_path, capsys):
    rows = th.read_jsonl(th.task_file(assets, "mcq", "test"))
    path = th.write_task_csv(tmp_path / "t.csv", rows, choice_columns=True)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ","  # the 5th example loses choice_2
    path.write_text("\n".join(lines) + "\n")
    th.assert_one_error_line(evaluate(capsys, th.finetuned(assets, "mcq"), "mcq", path), f"{path}:6", "2 choices")


def test_mcq_data_with_another_choice_count_than_the_checkpoint(assets, tmp_path, capsys):
    path = th.write_task_jsonl(tmp_path / "t.jsonl", th.mcq_examples(6, 9, n_choices=4))
    th.assert_one_error_line(evaluate(capsys, th.finetuned(assets, "mcq"), "mcq", path), str(path), "4 choices", "3")


def test_mcq_label_out_of_range(assets, tmp_path, capsys):
    rows = th.read_jsonl(th.task_file(assets, "mcq", "test"))
    rows[0] = dict(rows[0], label=3)
    path = th.write_task_jsonl(tmp_path / "t.jsonl", rows)
    th.assert_one_error_line(evaluate(capsys, th.finetuned(assets, "mcq"), "mcq", path), f"{path}:1", "label 3")


@pytest.mark.parametrize("kind", ["jsonl", "blank-jsonl", "csv-header-only"])
def test_empty_task_file(kind, assets, tmp_path, capsys):
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
    th.assert_one_error_line(finetune(capsys, assets, "classify", path, th.task_file(assets, "classify", "val"), out),
                             str(path), "no examples")
    assert_no_run(out)
    th.assert_one_error_line(th.run_main(["predict", "--ckpt", th.finetuned(assets, "classify"), "--data", path,
                                          "--out", tmp_path / "p.jsonl", "--device", "cpu"], capsys), str(path))
    assert not (tmp_path / "p.jsonl").exists()


def test_malformed_json_line(assets, tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    lines = th.task_file(assets, "classify", "test").read_text().splitlines()
    lines[2] = lines[2][:-3]
    path.write_text("\n".join(lines) + "\n")
    th.assert_one_error_line(evaluate(capsys, th.finetuned(assets, "classify"), "classify", path), f"{path}:3", "JSON")


def test_one_label_only_cannot_train_a_classifier(assets, tmp_path, capsys):
    rows = [r for r in th.read_jsonl(th.task_file(assets, "classify", "train")) if r["label"] == "pos"]
    path = th.write_task_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "run"
    th.assert_one_error_line(finetune(capsys, assets, "classify", path, path, out), str(path), "one label")
    assert_no_run(out)


def test_regression_with_a_non_numeric_label(assets, tmp_path, capsys):
    rows = th.read_jsonl(th.task_file(assets, "similar-reg", "train"))
    rows[10] = dict(rows[10], label="high")
    path = th.write_task_jsonl(tmp_path / "t.jsonl", rows)
    out = tmp_path / "run"
    result = finetune(capsys, assets, "similar", path, th.task_file(assets, "similar-reg", "val"), out, "--regression")
    th.assert_one_error_line(result, f"{path}:11", "--regression", "'high'")
    assert_no_run(out)


def test_regression_only_for_similar(assets, tmp_path, capsys):
    result = finetune(capsys, assets, "classify", th.task_file(assets, "classify", "train"),
                      th.task_file(assets, "classify", "val"), tmp_path / "run", "--regression")
    th.assert_one_error_line(result, "--regression", "similar")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_eval_with_another_task_than_the_checkpoint(assets, tmp_path, capsys):
    run = th.finetuned(assets, "mcq")
    json_out = tmp_path / "m.json"
    line = th.assert_one_error_line(evaluate(capsys, run, "classify", th.task_file(assets, "classify", "test"),
                                             "--json", json_out), str(run), "mcq", "classify")
    assert "fine-tuned" in line
    assert not json_out.exists()


def test_zero_shot_needs_mcq(assets, capsys):
    result = evaluate(capsys, assets.run, "classify", th.task_file(assets, "classify", "test"), "--zero-shot")
    th.assert_one_error_line(result, "--zero-shot", "mcq")


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_pretrained_checkpoint_has_no_head(command, assets, tmp_path, capsys):
    data = th.task_file(assets, "classify", "test")
    if command == "eval":
        result = evaluate(capsys, assets.run, "classify", data)
    else:
        result = th.run_main(["predict", "--ckpt", assets.run, "--data", data, "--out", tmp_path / "p.jsonl",
                              "--device", "cpu"], capsys)
    th.assert_one_error_line(result, str(assets.run), "without a task head")
    assert not (tmp_path / "p.jsonl").exists()


def test_finetune_from_a_finetuned_checkpoint(assets, tmp_path, capsys):
    source = th.finetuned(assets, "classify")
    out = tmp_path / "run"
    result = th.run_main(["finetune", "--task", "classify", "--train", th.task_file(assets, "classify", "train"),
                          "--val", th.task_file(assets, "classify", "val"), "--from", source, "--out", out,
                          *th.FINETUNE_ARGS], capsys)
    th.assert_one_error_line(result, str(source), "already fine-tuned", "pre-trained")
    assert_no_run(out)


def test_out_dir_already_holds_a_run(assets, tmp_path, capsys):
    existing = th.finetuned(assets, "classify")
    before = th.checkpoint_meta(existing)
    log_before = (existing / "metrics.jsonl").read_bytes()
    result = finetune(capsys, assets, "classify", th.task_file(assets, "classify", "train"),
                      th.task_file(assets, "classify", "val"), existing)
    th.assert_one_error_line(result, str(existing), "already holds a run")
    assert th.checkpoint_meta(existing) == before
    assert (existing / "metrics.jsonl").read_bytes() == log_before  # untouched


def test_task_file_not_found_and_unknown_task(assets, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    th.assert_one_error_line(evaluate(capsys, th.finetuned(assets, "classify"), "classify", missing), str(missing))
    result = finetune(capsys, assets, "summarise", th.task_file(assets, "classify", "train"),
                      th.task_file(assets, "classify", "val"), tmp_path / "run")
    th.assert_one_error_line(result, "summarise")
