"""Hardening of the task commands (finetune, eval, predict, make-task, generate, demo):

1. graceful stop and exact ``finetune --resume`` for both drivers; Ctrl-C on ``generate --input``;
2. the overwrite policy and ``-`` for standard output;
3. numbers refused at parse time and in the configs; non-finite fine-tuning steps;
4. text edge cases of task files (BOM, CSV line numbers, label types, suffix case, JSON bombs);
5. continuations decoded with their left context;
6. outputs that never look complete when they are not.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from support import (
    FINETUNE_ARGS, NEUTRAL_WORDS, assert_ok, assert_one_error_line, assert_refused_option, checkpoint_meta,
    finetuned, read_jsonl, run_main, run_subprocess, start_cli, task_file, wait_for, write_paragraphs,
    write_task_csv, write_task_jsonl, write_task_parquet,
)
from gpt1cli.checkpoint import load_checkpoint
from gpt1cli.errors import Gpt1Error, Interrupted, TrainingStopped
from gpt1cli.locking import exclusive_output
from gpt1cli.model.generation import completion as completion_module
from gpt1cli.model.generation.completion import DecodeSettings, complete, continuation_text
from gpt1cli.tasks import training
from gpt1cli.tasks.data import label_set, load_examples
from gpt1cli.tasks.finetune import FinetuneConfig, finetune
from gpt1cli.tasks.generative import GenerativeConfig, finetune_generate


@pytest.fixture(scope="module")
def task_tok(task_assets):
    from gpt1cli.tokenizer import load_tokenizer

    return load_tokenizer(task_assets.tokenizer)


def classify_config(task_assets, out, **changes) -> FinetuneConfig:
    settings = dict(task="classify", train=str(task_file(task_assets, "classify", "train")),
                    val=str(task_file(task_assets, "classify", "val")), from_run=str(task_assets.run), out=str(out),
                    lr=1e-3, batch_size=8, epochs=3, eval_every=5, device="cpu")
    settings.update(changes)
    return FinetuneConfig(**settings)


def generate_pairs(root: Path) -> tuple[Path, Path]:
    rng = random.Random(0)
    rows = [{"prompt": " ".join(rng.choice(NEUTRAL_WORDS) for _ in range(4)),
             "completion": " ".join(rng.choice(NEUTRAL_WORDS) for _ in range(3))} for _ in range(24)]
    return write_task_jsonl(root / "train.jsonl", rows[:16]), write_task_jsonl(root / "val.jsonl", rows[16:])


def train_and_eval_records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(run / "metrics.jsonl")
            if r["kind"] in ("train", "eval", "skip")]


def signal_at_step(monkeypatch, step: int, times: int = 1) -> None:
    """Send SIGINT to this process when the loop sets the learning rate of ``step`` (0-based)."""
    real = training.warmup_linear

    def hooked(at, **kwargs):
        if at == step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs before the next signal is sent
        return real(at, **kwargs)

    monkeypatch.setattr(training, "warmup_linear", hooked)


# ---------------------------------------------------------------------------------------------
# 1. Graceful stop and exact resume


@pytest.mark.slow
def test_finetune_sigint_exits_75_with_a_state_and_resume_matches_an_uninterrupted_run(task_assets, tmp_path, capsys):
    args = ["finetune", "--task", "classify", "--train", task_file(task_assets, "classify", "train"), "--val",
            task_file(task_assets, "classify", "val"), "--from", task_assets.run, "--epochs", "25", "--batch-size", "8",
            "--lr", "1e-3", "--eval-every", "30", "--device", "cpu", "-q"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert_ok(run_subprocess([*args, "--out", straight]))
    process = start_cli(*args, "--out", stopped, text=True)
    log = stopped / "metrics.jsonl"
    wait_for(lambda: log.exists() and '"step": 10,' in log.read_text(), process, what="step 10")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 75, err  # was 0: Ctrl-C ended fine-tuning as a success, with nothing to resume
    assert "continue with --resume" in err
    records = read_jsonl(log)
    assert records[-1]["kind"] == "stop"
    step = records[-1]["step"]
    assert 10 <= step < 100
    state = load_checkpoint(stopped / "train-state", with_trainer=True)
    assert state.step == step and state.trainer_meta["progress"]["step"] == step
    assert not state.trainer_meta["progress"]["finished"]

    # The same command again is refused (it would start over); --resume alone continues it.
    again = run_main([*args, "--out", stopped], capsys)
    assert_one_error_line(again, "stopped at step", "--resume")
    assert_ok(run_subprocess(["finetune", "--out", stopped, "--resume", "-q"]))
    assert train_and_eval_records(stopped) == train_and_eval_records(straight)  # every loss and metric, bit for bit
    best_a, best_b = load_checkpoint(straight), load_checkpoint(stopped)
    assert best_a.step == best_b.step and best_a.meta["weights_blake2b"] == best_b.meta["weights_blake2b"]
    assert [r["kind"] for r in read_jsonl(log) if r["kind"] in ("config", "stop", "resume")] == \
        ["config", "stop", "resume"]


def test_generate_task_stop_and_resume_match_an_uninterrupted_run(task_assets, tmp_path, monkeypatch):
    """The generative driver shares the loop: stopped at step 7 of 12 and resumed, it ends where an
    uninterrupted run ends (a decoding metric, so evaluation switches the model's mode midway)."""
    train, val = generate_pairs(tmp_path)

    def config(out, **kw):
        return GenerativeConfig(train=str(train), val=str(val), from_run=str(task_assets.run), out=str(out), lr=1e-3,
                                batch_size=4, epochs=3, eval_every=5, metric="bleu", device="cpu", **kw)

    straight = finetune_generate(config(tmp_path / "a"), show_progress=False)
    signal_at_step(monkeypatch, 6)
    with pytest.raises(TrainingStopped) as stop:
        finetune_generate(config(tmp_path / "b"), show_progress=False)
    assert stop.value.step == 7
    monkeypatch.undo()
    resumed = finetune_generate(config(tmp_path / "b", resume=True), show_progress=False)
    assert resumed["resumed"] and resumed["steps"] == straight["steps"] == 12
    assert train_and_eval_records(tmp_path / "b") == train_and_eval_records(tmp_path / "a")
    assert load_checkpoint(tmp_path / "b").meta["weights_blake2b"] == load_checkpoint(tmp_path / "a").meta["weights_blake2b"]


def test_a_second_sigint_stops_at_once_and_says_what_is_left(task_assets, tmp_path, monkeypatch):
    out = tmp_path / "run"
    signal_at_step(monkeypatch, 7, times=2)  # step 8, after the state of step 5 was written
    with pytest.raises(Interrupted) as info:
        finetune(classify_config(task_assets, out), show_progress=False)
    assert "stopped at once" in info.value.state
    assert "continues from its training state of step 5 with --resume" in info.value.state
    assert load_checkpoint(out / "train-state", with_trainer=True).step == 5


def test_resume_refuses_what_it_cannot_honour_and_reports_a_finished_run(task_assets, tmp_path, capsys):
    out = tmp_path / "run"
    finetune(classify_config(task_assets, out), show_progress=False)
    # Settings that change what is computed are refused, naming them and both values.
    result = run_main(["finetune", "--out", out, "--resume", "--lr", "0.5", "--epochs", "9"], capsys)
    assert_one_error_line(result, "cannot change", "--epochs (the run has 3, given 9)", "--lr (the run has 0.001")
    # A training file whose content changed.
    changed = tmp_path / "changed.jsonl"
    rows = read_jsonl(task_file(task_assets, "classify", "train"))
    write_task_jsonl(changed, rows[1:])
    result = run_main(["finetune", "--out", out, "--resume", "--train", changed], capsys)
    assert_one_error_line(result, str(changed), "not the file the run", "trained with")
    # A finished run: nothing to do, exit 0 with its final figures.
    result = assert_ok(run_main(["finetune", "--out", out, "--resume"], capsys))
    best = load_checkpoint(out)
    assert "finished already" in result.out and f"(step {best.step})" in result.out
    assert f"{best.meta['metrics']['val']['accuracy']:.4f}" in result.out
    # The same command without --resume is refused: the run would be replaced.
    result = run_main(["finetune", "--task", "classify", "--train", task_file(task_assets, "classify", "train"),
                       "--val", task_file(task_assets, "classify", "val"), "--from", task_assets.run, "--out", out,
                       "--device", "cpu", "-q"], capsys)
    assert_one_error_line(result, "already holds a run (finished at step 12)", "--overwrite")


def test_a_corrupt_training_position_is_one_error_not_a_silent_restart(task_assets, tmp_path, capsys):
    out = tmp_path / "run"
    finetune(classify_config(task_assets, out, epochs=1), show_progress=False)
    state = load_checkpoint(out / "train-state", with_trainer=True).path / "trainer.json"
    trainer = json.loads(state.read_text())
    trainer["progress"]["step"] = 0  # would train the finished weights again from step 0
    state.write_text(json.dumps(trainer))
    assert_one_error_line(run_main(["finetune", "--out", out, "--resume"], capsys),
                          "does not hold a readable training position", "--overwrite")


def test_resume_without_a_checkpoint_starts_the_run_and_says_so(task_assets, tmp_path, capsys):
    out = tmp_path / "run"
    result = run_main(["finetune", "--task", "classify", "--train", task_file(task_assets, "classify", "train"),
                       "--val", task_file(task_assets, "classify", "val"), "--from", task_assets.run, "--out", out,
                       "--resume", *FINETUNE_ARGS], capsys)
    assert_ok(result)
    assert f"no checkpoint in {out} yet: starting the run" in result.err
    assert load_checkpoint(out).step == 2
    # With nothing to resume, the options a new run needs are named.
    result = run_main(["finetune", "--out", tmp_path / "empty", "--resume"], capsys)
    assert_one_error_line(result, "--task, --train, --val, --from", "no training state")


def test_overwrite_replaces_a_finished_run_and_a_second_writer_is_refused(task_assets, tmp_path, capsys):
    out = tmp_path / "run"
    finetune(classify_config(task_assets, out, epochs=1), show_progress=False)
    finetune(classify_config(task_assets, out, epochs=2, overwrite=True), show_progress=False)
    log = read_jsonl(out / "metrics.jsonl")
    assert [r["kind"] for r in log].count("config") == 1 and log[0]["config"]["epochs"] == 2
    assert load_checkpoint(out / "train-state", with_trainer=True).step == 8
    with exclusive_output(out):
        with pytest.raises(Gpt1Error, match=f"in use by another gpt1 process \\(PID {os.getpid()}\\)"):
            finetune(classify_config(task_assets, out, overwrite=True), show_progress=False)


def test_verify_checks_the_training_state_of_a_fine_tuning_run(task_assets, tmp_path):
    from gpt1cli.verify import verify

    out = tmp_path / "run"
    finetune(classify_config(task_assets, out, epochs=1), show_progress=False)
    checks = verify(out)
    state = [c for c in checks if "train-state" in c.path.parts]
    assert state and all(c.ok for c in checks)
    trainer = next(c.path for c in state if c.path.name == "trainer.safetensors")
    data = trainer.read_bytes()
    trainer.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    bad = [c for c in verify(out) if not c.ok]
    assert [(c.path, c.detail) for c in bad] == [(trainer, "checksum mismatch")]


def test_a_failed_run_leaves_no_directory_behind(task_assets, tmp_path, capsys):
    bad = write_task_jsonl(tmp_path / "bad.jsonl", [{"text": "only one class", "label": "a"}] * 4)
    with pytest.raises(Gpt1Error, match="only one label"):
        finetune(classify_config(task_assets, tmp_path / "run", train=str(bad)), show_progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_generate_input_sigint_exits_130_and_keeps_a_clearly_named_partial(task_assets, tmp_path):
    prompts = write_task_jsonl(tmp_path / "prompts.jsonl",
                               [{"prompt": f"the old farmer walked {i}"} for i in range(400)])
    out = tmp_path / "completions.jsonl"
    process = start_cli("generate", "--ckpt", task_assets.run, "--input", prompts, "--out", out,
                        "--max-new-tokens", "30", "--temperature", "0", "--device", "cpu", "-q", text=True)

    def some_lines_written() -> bool:
        return any(p.stat().st_size > 0 for p in tmp_path.glob(".completions.jsonl.*.tmp"))

    wait_for(some_lines_written, process, what="a first completion")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err  # was 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "Traceback" not in err
    partial = tmp_path / "completions.jsonl.partial"
    assert f"of 400 completions kept in {partial}; {out} was not written" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".completions.jsonl.*"))
    kept = read_jsonl(partial)
    assert f"{len(kept)} of 400" in lines[0] and 0 < len(kept) < 400
    assert [r["prompt"] for r in kept] == [f"the old farmer walked {i}" for i in range(len(kept))]


# ---------------------------------------------------------------------------------------------
# 2. Overwrite policy and standard output


def test_make_task_refuses_to_re_split_an_existing_task(tmp_path, capsys):
    corpus = write_paragraphs(tmp_path / "corpus.txt", seed=1)
    out = tmp_path / "task"
    assert_ok(run_main(["make-task", "cloze", corpus, "--out", out], capsys))
    before = {p.name: p.read_bytes() for p in out.glob("*.json*")}
    result = run_main(["make-task", "cloze", corpus, "--out", out, "--seed", "5"], capsys)
    assert_one_error_line(result, str(out / "train.jsonl"), "already exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.glob("*.json*")} == before  # was re-split silently
    assert_ok(run_main(["make-task", "cloze", corpus, "--out", out, "--seed", "5", "--overwrite"], capsys))
    assert json.loads((out / "task.json").read_text())["seed"] == 5
    assert (out / "train.jsonl").read_bytes() != before["train.jsonl"]


def test_make_task_writes_task_json_last_and_removes_the_old_one_first(tmp_path, monkeypatch):
    from gpt1cli.tasks import cloze

    corpus = write_paragraphs(tmp_path / "corpus.txt", seed=2)
    out = tmp_path / "task"
    cloze.make_cloze([str(corpus)], out)

    def crash(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(cloze, "atomic_write_json", crash)
    with pytest.raises(OSError):
        cloze.make_cloze([str(corpus)], out, cloze.ClozeConfig(seed=3, overwrite=True))
    # The new splits are in place but nothing vouches for them: no task.json of the old task remains.
    assert not (out / "task.json").exists()


def test_predict_eval_and_generate_refuse_existing_outputs_and_take_dash_for_stdout(task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "classify")
    test = task_file(task_assets, "classify", "test")
    existing = tmp_path / "existing.jsonl"
    existing.write_text("keep me\n")
    for argv in (["predict", "--ckpt", run, "--data", test, "--out", existing],
                 ["eval", "--ckpt", run, "--task", "classify", "--data", test, "--json", existing],
                 ["generate", "--ckpt", task_assets.run, "--input", test, "--out", existing, "--max-new-tokens", "2"]):
        assert_one_error_line(run_main([*argv, "--device", "cpu"], capsys), str(existing), "--overwrite")
        assert existing.read_text() == "keep me\n"
    assert_ok(run_main(["predict", "--ckpt", run, "--data", test, "--out", existing, "--overwrite",
                        "--device", "cpu"], capsys))
    assert len(read_jsonl(existing)) == 16

    # `-` is standard output, never a file named "-".
    os.chdir(tmp_path)
    result = assert_ok(run_main(["eval", "--ckpt", run, "--task", "classify", "--data", test, "--json", "-",
                                 "--device", "cpu"], capsys))
    report = json.loads(result.out)
    assert report["examples"] == 16 and report["task"] == "classify"
    assert "confusion" in result.err  # the table goes to standard error
    result = assert_ok(run_main(["predict", "--ckpt", run, "--data", test, "--out", "-", "--device", "cpu"],
                                capsys))
    assert [json.loads(line) for line in result.out.splitlines()] == read_jsonl(existing)
    assert not (tmp_path / "-").exists()


def test_demo_replaces_only_a_folder_it_made(tmp_path):
    from gpt1cli.demo import MARKER, prepare_demo_dir

    mine = tmp_path / "home"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    with pytest.raises(Gpt1Error, match="was not made by gpt1 demo.*--overwrite"):
        prepare_demo_dir(mine)
    assert (mine / "thesis.txt").read_text() == "years of work"  # was deleted by shutil.rmtree
    demo = tmp_path / "demo-out"
    prepare_demo_dir(demo)
    (demo / "shards").mkdir()
    prepare_demo_dir(demo)  # an earlier demo's folder is replaced
    assert sorted(p.name for p in demo.iterdir()) == [MARKER]


# ---------------------------------------------------------------------------------------------
# 3. Numbers


FINETUNE_NUMBERS = [
    ("--lm-coef", "nan", "finite"), ("--lm-coef", "-1", "at least 0"), ("--head-dropout", "1.5", "less than 1"),
    ("--lr", "inf", "finite"), ("--lr", "nan", "finite"), ("--lr", "0", "greater than 0"), ("--lr", "-1e-3", "greater than 0"),
    ("--weight-decay", "nan", "finite"), ("--weight-decay", "-0.1", "at least 0"),
    ("--warmup-fraction", "1.5", "at most 1"), ("--warmup-fraction", "-0.1", "at least 0"),
    ("--batch-size", "0", "at least 1"), ("--epochs", "0", "at least 1"), ("--seed", "-1", "at least 0"),
    ("--eval-every", "0", "at least 1"), ("--max-new-tokens", "-5", "at least 1"),
]


@pytest.mark.parametrize("option, value, reason", FINETUNE_NUMBERS)
def test_finetune_refuses_bad_numbers_at_parse_time(task_assets, tmp_path, capsys, option, value, reason):
    result = run_main(["finetune", "--task", "classify", "--train", task_file(task_assets, "classify", "train"),
                       "--val", task_file(task_assets, "classify", "val"), "--from", task_assets.run,
                       "--out", tmp_path / "run", option, value], capsys)
    assert_refused_option(result, option, reason)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, option, reason", [
    (["eval", "--task", "classify", "--shots", "1", "--seed", "-1"], "--seed", "at least 0"),
    (["make-task", "cloze", "x.txt", "--out", "t", "--seed", "-1"], "--seed", "at least 0"),
    (["make-task", "cloze", "x.txt", "--out", "t", "--train-fraction", "nan"], "--train-fraction", "finite"),
    (["demo", "--corpus-mb", "-1"], "--corpus-mb", "greater than 0"),
])
def test_other_commands_refuse_bad_numbers_at_parse_time(task_assets, tmp_path, capsys, argv, option, reason):
    if argv[0] == "eval":
        argv = [*argv, "--ckpt", task_assets.run, "--data", task_file(task_assets, "classify", "test")]
    assert_refused_option(run_main(argv, capsys), option, reason)


@pytest.mark.parametrize("changes, message", [
    ({"lm_coef": math.nan}, "--lm-coef must be a finite number"),
    ({"head_dropout": 1.0}, "--head-dropout must be less than 1"),
    ({"lr": math.inf}, "--lr must be a finite number"),
    ({"warmup_fraction": 2.0}, "--warmup-fraction must be at most 1"),
    ({"seed": -1}, "--seed must be at least 0"),
    ({"resume": True, "overwrite": True}, "give one"),
])
def test_the_configs_check_the_same_ranges(task_assets, tmp_path, changes, message):
    with pytest.raises(Gpt1Error, match=message):
        classify_config(task_assets, tmp_path / "run", **changes).check()
    generative = {k: v for k, v in changes.items() if k not in ("lm_coef", "head_dropout")}
    if generative:
        with pytest.raises(Gpt1Error, match=message):
            GenerativeConfig(train="t", val="v", from_run="r", out="o", **generative).check()


def test_a_non_finite_final_step_is_skipped_and_the_run_fails_with_finite_weights(task_assets, tmp_path, monkeypatch):
    """Before: the NaN step updated the weights, the final evaluation kept them as the best and
    `latest` named a checkpoint of NaN weights; the run exited 0."""
    from gpt1cli.tasks.heads import TaskModel

    real_forward = TaskModel.forward
    calls = {"n": 0}

    def poisoned(self, batch, **kwargs):
        logits, lm_loss = real_forward(self, batch, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in (2, 4):  # steps 2 and 4 of 4: one in the middle, the last one
                logits = logits * math.nan
        return logits, lm_loss

    monkeypatch.setattr(TaskModel, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(Gpt1Error, match=r"the last step \(4\) had a non-finite loss"):
        finetune(classify_config(task_assets, out, epochs=1, eval_every=None), show_progress=False)
    log = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in log if r["kind"] == "skip"] == [2, 4]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 3]
    best = load_checkpoint(out)
    assert best.step == 4 and all(bool(torch.isfinite(t).all()) for t in best.state_dict.values())
    assert math.isfinite(best.meta["metrics"]["val"]["accuracy"])


# ---------------------------------------------------------------------------------------------
# 4. Task files


def test_a_spreadsheet_csv_with_a_bom_reads_like_one_without(tmp_path):
    rows = [{"text": "sunny joyful", "label": "pos"}, {"text": "stormy awful", "label": "neg"}]
    plain = write_task_csv(tmp_path / "plain.csv", rows)
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    assert [(e.fields, e.label) for e in load_examples(bom, "classify")] == \
        [(e.fields, e.label) for e in load_examples(plain, "classify")]  # was: missing the 'text' field
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert [e.label for e in load_examples(jsonl, "classify")] == ["pos", "neg"]  # was: line 1 not valid JSON


def test_csv_problems_are_reported_at_their_physical_line(tmp_path):
    path = tmp_path / "multi.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerow(["first line\nsecond line\nthird line", "pos"])  # lines 2-4
        writer.writerow(["a row", "neg"])  # line 5
        writer.writerow(["two\nlines", "pos"])  # lines 6-7
        writer.writerow(["no label here"])  # line 8: the label is missing
    with pytest.raises(Gpt1Error, match=r"multi\.csv:8: missing the 'label' field"):  # was :5 (the record number)
        load_examples(path, "classify")
    examples = load_examples(path, "classify", require_label=False)
    assert [e.where.rsplit(":", 1)[1] for e in examples] == ["2", "5", "6", "8"]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text,label\nok,pos\nfine,neg\n\xff\xfe,pos\n")
    with pytest.raises(Gpt1Error, match=r"bad\.csv:4: invalid UTF-8"):
        load_examples(bad, "classify")


def test_true_and_1_are_different_labels_and_mixed_kinds_are_one_clear_error(tmp_path):
    mixed = write_task_jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": True}, {"text": "b", "label": 1},
                                                        {"text": "c", "label": False}])
    with pytest.raises(Gpt1Error, match=r"mixed\.jsonl:2: label 1 is an integer, but .*mixed\.jsonl:1 has a true/false "
                                        r"label True: write every label of a file the same way"):
        load_examples(mixed, "classify")
    booleans = write_task_jsonl(tmp_path / "bool.jsonl", [{"text": "a", "label": True}, {"text": "b", "label": False}])
    labels = label_set(load_examples(booleans, "classify"))
    assert labels == [False, True] and all(type(x) is bool for x in labels)
    from gpt1cli.tasks.data import Example
    from gpt1cli.tasks.inference import label_indices

    assert label_set([Example({}, True, "x"), Example({}, 1, "y")]) == [1, True]  # was one merged class
    # A CSV has no types: "true" in a cell matches the JSON label true; 1 never does.
    assert label_indices([Example({}, "true", "x"), Example({}, False, "y")], labels, False) == [1, 0]
    with pytest.raises(Gpt1Error, match="label 1 was not seen in training"):
        label_indices([Example({}, 1, "z")], labels, False)
    # A CSV whose cells read as a mix of numbers and words keeps them all as text.
    csv_path = write_task_csv(tmp_path / "m.csv", [{"text": "a", "label": "1"}, {"text": "b", "label": "other"}])
    assert [e.label for e in load_examples(csv_path, "classify")] == ["1", "other"]


def test_bool_labels_train_and_evaluate_from_jsonl_and_csv(task_assets, tmp_path, capsys):
    def relabel(rows):
        return [dict(r, label=r["label"] == "pos") for r in rows]

    train = write_task_jsonl(tmp_path / "train.jsonl", relabel(read_jsonl(task_file(task_assets, "classify", "train"))))
    val = write_task_jsonl(tmp_path / "val.jsonl", relabel(read_jsonl(task_file(task_assets, "classify", "val"))))
    test_rows = relabel(read_jsonl(task_file(task_assets, "classify", "test")))
    run = tmp_path / "run"
    assert_ok(run_main(["finetune", "--task", "classify", "--train", train, "--val", val, "--from", task_assets.run,
                        "--out", run, *FINETUNE_ARGS], capsys))
    assert checkpoint_meta(run)["task"]["labels"] == [False, True]
    reports = []
    for name, path in (("j", write_task_jsonl(tmp_path / "t.jsonl", test_rows)),
                       ("c", write_task_csv(tmp_path / "t.csv", [dict(r, label=str(r["label"]).lower())
                                                                 for r in test_rows]))):
        assert_ok(run_main(["eval", "--ckpt", run, "--task", "classify", "--data", path, "--json",
                            tmp_path / f"{name}.json", "--device", "cpu"], capsys))
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
        assert reports[-1].pop("provenance")["data"][0]["path"].endswith(f"t{path.suffix}")
    assert reports[0] == reports[1] and reports[0]["examples"] == 16


@pytest.mark.parametrize("suffix", [".CSV", ".JSONL", ".PARQUET", ".Jsonl"])
def test_upper_case_suffixes_are_task_files(tmp_path, suffix):
    rows = [{"text": "sunny", "label": "pos"}, {"text": "stormy", "label": "neg"}]
    writer = {".csv": write_task_csv, ".jsonl": write_task_jsonl, ".parquet": write_task_parquet}
    path = writer[suffix.lower()](tmp_path / f"t{suffix}", rows)
    assert [e.label for e in load_examples(path, "classify")] == ["pos", "neg"]


@pytest.mark.parametrize("bomb, message", [
    ('{"text": "x", "label": ' + "1" * 5000 + "}", "holds a value JSON cannot be read into"),
    ('{"text": "x", "label": ' + "[" * 100_000 + "]" * 100_000 + "}", "is nested too deeply"),
])
def test_json_bombs_in_task_and_prompt_files_are_one_error_with_file_and_line(tmp_path, bomb, message):
    from gpt1cli.tasks.generative import load_pairs

    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "fine", "label": "a", "prompt": "p", "completion": "c"}\n' + bomb + "\n")
    with pytest.raises(Gpt1Error, match=f"t\\.jsonl:2 {message}"):
        load_examples(path, "classify")
    with pytest.raises(Gpt1Error, match=f"t\\.jsonl:2 {message}"):
        load_pairs(path)
    deep_cell = tmp_path / "deep.csv"
    deep_cell.write_text('context,choices,label\nc,"' + "[" * 100_000 + '",0\n')
    with pytest.raises(Gpt1Error, match=r"deep\.csv:2: 'choices' must be a list of strings"):  # was RecursionError
        load_examples(deep_cell, "mcq")


def test_a_verbalizer_file_with_a_bom_or_a_bomb(tmp_path):
    from gpt1cli.tasks.fewshot import parse_verbalizer

    good = tmp_path / "v.json"
    good.write_bytes(b"\xef\xbb\xbf" + json.dumps({"pos": "great"}).encode())
    assert parse_verbalizer(str(good)) == {"pos": "great"}
    bad = tmp_path / "deep.json"
    bad.write_text("[" * 100_000)
    with pytest.raises(Gpt1Error, match="nested too deeply"):
        parse_verbalizer(str(bad))


# ---------------------------------------------------------------------------------------------
# 5. Continuations decoded with their left context


def byte_ids(task_tok, char: str) -> list[int]:
    """The byte-fallback ids of a character the tokenizer has no piece for."""
    ids = task_tok.encode(char)[-len(char.encode()):]
    assert all(task_tok.decode([i]) == "\ufffd" for i in ids)
    return ids


def test_a_continuation_starting_a_new_word_keeps_its_space(task_tok):
    prompt, completion = task_tok.encode("Return a new list"), task_tok.encode("of the file")
    assert task_tok.decode(completion) == "of the file"  # decoded apart: the word boundary is lost ("listof")
    assert continuation_text(task_tok, prompt, completion) == " of the file"
    assert continuation_text(task_tok, [], completion) == "of the file"


def test_a_character_split_across_the_join_belongs_to_the_continuation(task_tok):
    euro = byte_ids(task_tok, "€")  # three byte pieces
    prompt = task_tok.encode("price") + euro[:1]
    # The prompt's dangling first byte decodes to U+FFFD; with its last two bytes it is one character.
    assert continuation_text(task_tok, prompt, euro[1:] + task_tok.encode("5")) == "€ 5"
    assert continuation_text(task_tok, prompt, euro[1:2]) == "\ufffd"  # still incomplete: one more undecodable byte
    assert continuation_text(task_tok, task_tok.encode("price"), euro) == "€"  # byte pieces carry no word boundary


def scripted(monkeypatch, tokens: list[int]) -> None:
    """Make generation yield ``tokens`` (then stop), whatever the model."""
    def fake(model, prompt, **kwargs):
        for token in tokens:
            yield token, -1.0

    monkeypatch.setattr(completion_module, "decode", fake)


def test_streamed_text_joins_to_the_final_text_and_never_shows_a_half_character(task_assets, task_tok, monkeypatch):
    from gpt1cli.model.loading import model_from_checkpoint

    model, _ = model_from_checkpoint(task_assets.run, torch.device("cpu"))
    euro = byte_ids(task_tok, "€")
    script = task_tok.encode("of the file")[:2] + euro + task_tok.encode("5")
    scripted(monkeypatch, script)
    pieces: list[str] = []
    [result] = complete(model, task_tok, task_tok.encode("Return a new list"), DecodeSettings(max_new_tokens=50, temperature=0.0),
                        on_text=pieces.append)
    assert result.text == continuation_text(task_tok, task_tok.encode("Return a new list"), script)
    assert result.text.startswith(" of") and result.text.endswith("€ 5")
    assert "".join(pieces) == result.text and not any("\ufffd" in p for p in pieces)


def test_demo_and_generate_print_the_word_boundary_at_the_join(task_assets, task_tok, monkeypatch, capsys):
    from gpt1cli.demo import DEMO_PROMPT, greedy_sample
    from gpt1cli.model.loading import model_from_checkpoint

    model, _ = model_from_checkpoint(task_assets.run, torch.device("cpu"))
    scripted(monkeypatch, task_tok.encode("of the file."))
    assert DEMO_PROMPT + greedy_sample(model, task_tok, DEMO_PROMPT) == "Return a new list of the file."  # was "listof"
    result = assert_ok(run_main(["generate", "--ckpt", task_assets.run, "--prompt", DEMO_PROMPT, "--temperature", "0",
                                 "--device", "cpu"], capsys))
    assert result.out == "Return a new list of the file.\n"
    prompts = write_task_jsonl(Path(task_assets.root) / "hardening-prompts.jsonl", [{"prompt": DEMO_PROMPT}])
    result = assert_ok(run_main(["generate", "--ckpt", task_assets.run, "--input", prompts, "--out", "-",
                                 "--device", "cpu", "-q"], capsys))
    record = json.loads(result.out)
    assert record["prompt"] + record["completion"] == "Return a new list of the file."
