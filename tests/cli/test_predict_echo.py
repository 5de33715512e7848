"""`gpt1 predict`: each line echoes the example's id (its id field, else its row number) and its
input fields beside the prediction; the table shows them too; --batch-size changes nothing;
a progress line unless -q."""

from __future__ import annotations

import json

import pytest

from support import (assert_ok, assert_one_error_line, finetuned, read_jsonl, run_main, task_file, write_task_csv,
                     write_task_jsonl, write_task_parquet)


def predict(capsys, run, data, out, *extra):
    result = assert_ok(run_main(["predict", "--ckpt", run, "--data", data, "--out", out, "--device", "cpu", *extra],
                                capsys))
    return result, read_jsonl(out)


def test_predictions_echo_ids_and_input_fields(task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "entail")
    rows = read_jsonl(task_file(task_assets, "entail", "test"))[:5]
    rows[1] = dict(rows[1], id="ex-17")
    rows[3] = dict(rows[3], id=4096)
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[2:]) + "\n")
    result, preds = predict(capsys, run, data, tmp_path / "out.jsonl", "-q")
    # row numbers count examples (the blank line is no example); an id field is kept as given
    assert [p["id"] for p in preds] == [1, "ex-17", 3, 4096, 5]
    for p, row in zip(preds, rows):
        assert list(p)[:3] == ["id", "premise", "hypothesis"]
        assert p["premise"] == row["premise"] and p["hypothesis"] == row["hypothesis"]
        assert p["label"] in ("contradiction", "entailment", "neutral")
        assert p["probs"][p["label"]] == max(p["probs"].values())
    # the table shows each id, its input and the prediction with its probability
    lines = result.out.splitlines()
    for p in preds:
        line = next(line for line in lines if line.startswith(f"│ {str(p['id']):>5} │"))
        assert p["premise"][:20] in line and p["label"] in line and f"{p['probs'][p['label']]:.4f}" in line
    assert "5 predictions written to" in result.out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_row_numbers_are_the_same_in_every_format(fmt, task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "mcq")
    rows = read_jsonl(task_file(task_assets, "mcq", "test"))
    writer = write_task_csv if fmt == "csv" else write_task_parquet
    _, preds = predict(capsys, run, writer(tmp_path / f"t.{fmt}", rows), tmp_path / "a.jsonl", "-q")
    _, expected = predict(capsys, run, task_file(task_assets, "mcq", "test"), tmp_path / "b.jsonl", "-q")
    assert [p["id"] for p in preds] == list(range(1, 17))
    assert preds == expected
    assert preds[0]["context"] == rows[0]["context"] and preds[0]["choices"] == rows[0]["choices"]


def test_regression_predictions_echo_too(task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "similar-reg")
    rows = [{k: v for k, v in r.items() if k != "label"} for r in read_jsonl(task_file(task_assets, "similar-reg", "test"))]
    rows[0]["id"] = "first"
    result, preds = predict(capsys, run, write_task_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl", "-q")
    assert [p["id"] for p in preds] == ["first", *range(2, 17)]
    assert [(p["a"], p["b"]) for p in preds] == [(r["a"], r["b"]) for r in rows]
    assert all(isinstance(p["value"], float) for p in preds)
    assert "predictions (the first 10 of 16)" in result.out
    assert "│ first │" in result.out


def test_predictions_do_not_depend_on_the_batch_size(task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "similar")
    test = task_file(task_assets, "similar", "test")
    _, one = predict(capsys, run, test, tmp_path / "1.jsonl", "--batch-size", "1", "-q")
    _, seven = predict(capsys, run, test, tmp_path / "7.jsonl", "--batch-size", "7", "-q")
    assert [p["label"] for p in one] == [p["label"] for p in seven]
    for a, b in zip(one, seven):
        assert a["probs"] == pytest.approx(b["probs"], abs=2e-6)  # rounded to 6 decimals


def test_progress_line_unless_quiet_and_a_bad_batch_size(task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "classify")
    test = task_file(task_assets, "classify", "test")
    loud, _ = predict(capsys, run, test, tmp_path / "a.jsonl")
    assert "predicting" in loud.err
    quiet, _ = predict(capsys, run, test, tmp_path / "b.jsonl", "-q")
    assert quiet.err == ""
    # standard output holds the predictions alone: the table is left out, the count goes to stderr
    dash = assert_ok(run_main(["predict", "--ckpt", run, "--data", test, "--out", "-", "--device", "cpu", "-q"], capsys))
    assert [json.loads(line) for line in dash.out.splitlines()] == read_jsonl(tmp_path / "b.jsonl")
    assert dash.err.strip() == "16 predictions written to standard output"
    bad = run_main(["predict", "--ckpt", run, "--data", test, "--out", tmp_path / "c.jsonl", "--batch-size", "0",
                    "--device", "cpu"], capsys)
    assert_one_error_line(bad, "--batch-size")
    assert not (tmp_path / "c.jsonl").exists()
