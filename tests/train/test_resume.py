"""Exact resume: --stop-after then --resume equals one uninterrupted run; runs are never clobbered."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import support

# Dropout stays on (0.1) so the restored RNG state matters; log and evaluate every few steps.
ARGS = ["--preset", "tiny", "--n-ctx", "32", "--steps", "8", "--batch-size", "4", "--lr", "3e-3",
        "--log-every", "1", "--eval-every", "4", "--eval-tokens", "96", "--ckpt-every", "100",
        "--seed", "3", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory):
    """An uninterrupted 8-step run, and the same run stopped after 4 steps then resumed."""
    from gpt1cli.cli.app import main

    root = tmp_path_factory.mktemp("resume")
    full, split = root / "full", root / "split"
    with support.one_torch_thread():
        main(["pretrain", "--shards", str(assets.shards), "--out", str(full), *ARGS])
        main(["pretrain", "--shards", str(assets.shards), "--out", str(split), *ARGS, "--stop-after", "4"])
        stopped = {
            "checkpoints": sorted(p.name for p in (split / "checkpoints").iterdir() if p.is_dir()),
            "latest": (split / "checkpoints" / "latest").read_text(),
            "metrics": support.read_metrics(split),
        }
        main(["pretrain", "--shards", str(assets.shards), "--out", str(split), "--resume", "--device", "cpu", "-q"])
    return full, split, stopped


def weights(run):
    folder = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return load_file(str(folder / "model.safetensors")), load_file(str(folder / "trainer.safetensors"))


def test_stop_after_checkpoints_at_that_step(runs):
    _, _, stopped = runs
    assert stopped["checkpoints"] == ["step_00000004"]
    assert stopped["latest"] == "step_00000004\n"
    train_steps = [r["step"] for r in stopped["metrics"] if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4]
    # the schedule is the 8-step one: the lr at step 4 is already decaying from the peak
    lrs = [r["lr"] for r in stopped["metrics"] if r["kind"] == "train"]
    assert lrs[0] == pytest.approx(3e-3) and lrs[3] < 3e-3


def test_resume_reaches_the_bit_identical_final_loss_and_weights(runs):
    full, split, _ = runs
    full_train = {r["step"]: r for r in support.records(full, "train")}
    split_train = {r["step"]: r for r in support.records(split, "train")}
    assert sorted(full_train) == list(range(1, 9))
    assert 8 in split_train
    assert split_train[8]["loss"] == full_train[8]["loss"]  # exact float equality
    assert split_train[8]["lr"] == full_train[8]["lr"]
    assert split_train[8]["grad_norm"] == full_train[8]["grad_norm"]
    for step in range(1, 5):  # the first invocation matches too
        assert split_train[step]["loss"] == full_train[step]["loss"]
    # the final weights and optimiser moments are bit-identical
    (full_w, full_t), (split_w, split_t) = weights(full), weights(split)
    assert full_w.keys() == split_w.keys()
    for name in full_w:
        assert torch.equal(full_w[name], split_w[name]), name
    for name in full_t:
        assert torch.equal(full_t[name], split_t[name]), name
    # and the resume was logged as such
    resume = support.records(split, "resume")
    assert len(resume) == 1 and resume[0]["step"] == 4
    assert len(support.records(split, "config")) == 1


def test_resume_keeps_the_run_logging_and_evaluation_settings(runs):
    """`--resume` without options must continue with the run's saved cadence and eval size."""
    full, split, _ = runs
    full_train = [r["step"] for r in support.records(full, "train")]
    split_train = [r["step"] for r in support.records(split, "train")]
    assert split_train == full_train, "--log-every 1 of the run was not kept on resume"
    full_eval = {r["step"]: r for r in support.records(full, "eval")}
    split_eval = {r["step"]: r for r in support.records(split, "eval")}
    assert sorted(split_eval) == sorted(full_eval) == [4, 8]
    assert split_eval[8]["val_tokens"] == full_eval[8]["val_tokens"] == 96
    assert split_eval[8]["val_loss"] == full_eval[8]["val_loss"]


def test_pretrain_into_an_existing_run_without_resume_is_refused(runs, assets, capsys):
    full, _, _ = runs
    before = (full / "metrics.jsonl").read_bytes()
    result = support.run_main(["pretrain", "--shards", assets.shards, "--out", full, *ARGS], capsys)
    support.assert_one_error_line(result, str(full), "already holds a run", "--resume")
    assert (full / "metrics.jsonl").read_bytes() == before
    assert (full / "checkpoints" / "latest").read_text() == "step_00000008\n"


def test_resume_without_a_checkpoint_is_refused(assets, tmp_path, capsys):
    result = support.run_main(["pretrain", "--shards", assets.shards, "--out", tmp_path / "empty", "--resume",
                               "--device", "cpu", "-q"], capsys)
    support.assert_one_error_line(result, str(tmp_path / "empty"), "no checkpoint to resume from")
    assert not (tmp_path / "empty" / "metrics.jsonl").exists()


def test_resume_with_shards_of_another_tokenizer_is_refused(assets, tmp_path, capsys):
    # Shards of the same text under a different tokenizer (another vocabulary size).
    other = tmp_path / "other-shards"
    made = support.run_main(["tokenize", assets.corpus, "--out", other, "--vocab-size", "350",
                             "--val-fraction", "0.1", "--threads", "1", "-q"], capsys)
    assert made.code == 0, made.err
    assert support.read_manifest(other)["tokenizer"]["blake2b"] != support.read_manifest(assets.shards)["tokenizer"]["blake2b"]
    run = shutil.copytree(assets.run, tmp_path / "run")
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    result = support.run_main(["pretrain", "--shards", other, "--out", run, "--resume", "--steps", "26",
                               "--device", "cpu", "-q"], capsys)
    support.assert_one_error_line(result, str(other), "different tokenizer")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_resume_uses_the_shards_it_is_given_after_they_moved(assets, tmp_path, capsys):
    """Shards moved to another disk: `--resume --shards NEW` must train on NEW, not the saved old path."""
    old = shutil.copytree(assets.shards, tmp_path / "old-shards")
    run = tmp_path / "run"
    first = support.run_main(["pretrain", "--shards", old, "--out", run, *ARGS, "--stop-after", "2"], capsys)
    assert first.code == 0, first.err
    new = old.rename(tmp_path / "new-shards")
    result = support.run_main(["pretrain", "--shards", new, "--out", run, "--resume", "--device", "cpu", "-q"], capsys)
    assert result.code == 0, result.err
    assert (run / "checkpoints" / "latest").read_text() == "step_00000008\n"
    trainer = json.loads((run / "checkpoints" / "step_00000008" / "trainer.json").read_text())
    assert trainer["config"]["shards"] == str(new)
