"""Faults: hard kills, graceful stops, full disks and non-finite steps lose nothing."""

from __future__ import annotations

import json
import random
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import support
from gpt1cli.checkpoint import load_checkpoint
from gpt1cli.data.pipeline import tokenize_corpus
from gpt1cli.errors import Gpt1Error
from gpt1cli.train.pretrain import PretrainConfig, pretrain
from gpt1cli.verify import verify

pytestmark = pytest.mark.slow

TEXT_WORDS = ("a checkpoint is written under a temporary name and renamed so that a crash at any moment leaves "
              "the previous one whole while training goes on from the step it reached").split()
RUN = ["--preset", "tiny", "--batch-size", "4", "--eval-every", "5", "--eval-tokens", "128", "--log-every", "1",
       "--ckpt-every", "1", "--keep", "2", "-q"]


def write_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    return support.write_sentences(path, TEXT_WORDS, documents=documents, length=60, seed=seed)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    corpus = write_corpus(root / "corpus.txt", 300)
    tokenize_corpus([str(corpus)], root / "shards", vocab_size=300, val_fraction=0.05, show_progress=False)
    return root / "shards"


def pretrain_process(shards: Path, run: Path, *args: str) -> subprocess.Popen:
    """``gpt1 pretrain`` into ``run`` as a process of its own (``--resume`` alone continues a run)."""
    return support.start_cli("pretrain", "--shards", shards, "--out", run, *args)


def wait_for_step(run: Path, step: int, process: subprocess.Popen) -> None:
    support.wait_for(support.reached_step(run, step), process, what=f"step {step}")


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def assert_no_step_folder_is_half_written(run: Path) -> None:
    # No visible step folder is ever half-deleted: pruning renames to a hidden trash name first.
    for folder in (run / "checkpoints").glob("step_*"):
        assert (folder / "checkpoint.json").is_file(), f"{folder.name} is incomplete after SIGKILL"


def assert_finishes(process: subprocess.Popen) -> None:
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory) -> dict[int, float]:
    run = tmp_path_factory.mktemp("straight") / "run"
    support.assert_ok(support.run_subprocess(["pretrain", "--shards", shards, "--out", run, "--steps", "24", *RUN]))
    return support.train_losses(run)


def test_sigkill_at_random_points_then_resume_reaches_the_same_loss(shards, uninterrupted, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(7)
    kills = 0
    process = pretrain_process(shards, run, "--steps", "24", *RUN)
    for _ in range(4):
        # Let it reach a step, then kill it a random moment later: often inside a checkpoint write.
        wait_for_step(run, 1, process)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is not None:
            break
        kill(process)
        kills += 1
        checkpoint = load_checkpoint(run)  # the latest checkpoint is always complete and loads
        assert all(check.ok for check in verify(run))
        assert_no_step_folder_is_half_written(run)
        process = pretrain_process(shards, run, "--resume", "-q")
        assert checkpoint.step >= 1
    assert_finishes(process)
    assert kills >= 2
    resumed = support.train_losses(run)
    assert resumed[24] == uninterrupted[24]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert not list((run / "checkpoints").glob(".trash-*"))
    # Every line of the metrics log parses, even after kills mid-write.
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_sigkill_inside_training_steps_and_checkpoint_writes_never_breaks_latest(shards, uninterrupted, tmp_path):
    """Each kill lands within a few milliseconds of a step this process trained itself, so most
    land inside a checkpoint write (weights, trainer state, the rename, `latest`, pruning)."""
    run = tmp_path / "run"
    rng = random.Random(11)
    process = pretrain_process(shards, run, "--steps", "24", *RUN)
    kills = 0
    while kills < 5:
        seen = len(support.logged_steps(run))
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and len(support.logged_steps(run)) <= seen:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.04))
        if process.poll() is not None:
            break
        kill(process)
        kills += 1
        assert_no_step_folder_is_half_written(run)
        if (run / "checkpoints" / "latest").exists():
            assert load_checkpoint(run).step >= 1
            assert all(check.ok for check in verify(run)), [c for c in verify(run) if not c.ok]
        # else killed before its first checkpoint: --resume starts the run again (as a requeued job)
        process = pretrain_process(shards, run, "--resume", "-q")
    assert_finishes(process)
    assert kills >= 3
    resumed = support.train_losses(run)
    assert resumed.get(24) == uninterrupted[24], (run / "metrics.jsonl").read_text()
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_sigint_writes_a_checkpoint_and_exits_75_then_resume_matches(shards, uninterrupted, tmp_path):
    run = tmp_path / "run"
    process = pretrain_process(shards, run, "--steps", "24",
                               *[a if a != "1" or i != RUN.index("--ckpt-every") + 1 else "1000" for i, a in enumerate(RUN)])
    wait_for_step(run, 3, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 75, err.decode()
    assert b"continue with --resume" in err
    stopped = load_checkpoint(run).step
    assert stopped >= 3
    records = support.read_metrics(run)
    assert records[-1]["kind"] == "stop" and records[-1]["step"] == stopped
    support.assert_ok(support.run_subprocess(["pretrain", "--shards", shards, "--out", run, "--resume", "-q"]))
    assert support.train_losses(run)[24] == uninterrupted[24]


def test_sigterm_stops_gracefully_and_a_second_sigint_stops_at_once(shards, tmp_path):
    run = tmp_path / "run"
    process = pretrain_process(shards, run, "--steps", "100000", *RUN)
    wait_for_step(run, 2, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 75
    # Twice in a row: the second signal interrupts without waiting for the step to end.
    process = pretrain_process(shards, run, "--resume", "--steps", "100000", "-q")
    wait_for_step(run, load_checkpoint(run).step + 2, process)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode in (75, 130)
    load_checkpoint(run)  # whatever happened, the latest checkpoint loads


def test_a_full_disk_fails_cleanly_and_keeps_the_previous_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    support.assert_ok(support.run_subprocess(["pretrain", "--shards", shards, "--out", run, "--steps", "6", "--stop-after", "2",
                                              *RUN]))
    before = load_checkpoint(run)
    size = (before.path / "model.safetensors").stat().st_size

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    result = support.run_subprocess(["pretrain", "--shards", shards, "--out", run, "--resume"], preexec_fn=small_files)
    assert result.code == 2
    assert "error: cannot write checkpoint" in result.err and "previous checkpoint is intact" in result.err
    assert "Traceback" not in result.err
    after = load_checkpoint(run)
    assert after.path == before.path and after.step == 2
    assert all(check.ok for check in verify(run))
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_non_finite_steps_are_skipped_then_the_run_stops_with_its_last_good_checkpoint(shards, tmp_path, monkeypatch):
    support.poison_forward(monkeypatch, lambda call: call == 3 or call >= 6)
    run = tmp_path / "run"
    config = PretrainConfig(shards=str(shards), out=str(run), steps=20, batch_size=4, eval_every=100, ckpt_every=1,
                            log_every=1, max_bad_steps=3, keep=10)
    with pytest.raises(Gpt1Error, match=r"3 non-finite steps in a row at step 8"):
        pretrain(config, show_progress=False)
    records = support.read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "skip"] == [3, 6, 7, 8]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 4, 5]
    assert load_checkpoint(run).step == 5  # the last good step
    assert all(np.isfinite(t.numpy()).all() for t in load_checkpoint(run).state_dict.values())


def test_killed_tokenize_leaves_no_manifest_and_a_rerun_resumes_by_shard(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", 6000, seed=3)
    reference = tmp_path / "reference"
    out = tmp_path / "out"
    args = ["tokenize", str(corpus), "--out", str(out), "--vocab-size", "300", "--tokens-per-shard", "20000", "-q"]
    process = support.start_cli(*args)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and len(list(out.glob("train_*.arrow"))) < 3:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists()  # an unfinished directory never looks finished
    assert (out / ".tokenize-journal.json").exists()
    resumed_from = json.loads((out / ".tokenize-journal.json").read_text())["documents"]
    assert resumed_from > 0
    # The uninterrupted reference encodes with the tokenizer the killed run trained (multi-threaded
    # SentencePiece training is not bit-reproducible; resumption of the shards is what is tested).
    tokenize_corpus([str(corpus)], reference, tokenizer=out / "tokenizer.model", tokens_per_shard=20_000,
                    show_progress=False)
    support.assert_ok(support.run_subprocess(args))
    expected = json.loads((reference / "manifest.json").read_text())["splits"]
    actual = json.loads((out / "manifest.json").read_text())["splits"]
    for split in ("train", "val"):
        assert [s["blake2b"] for s in actual[split]["shards"]] == [s["blake2b"] for s in expected[split]["shards"]]
        assert actual[split]["documents"] == expected[split]["documents"]
    assert not (out / ".tokenize-journal.json").exists()
    assert all(check.ok for check in verify(out))


def test_nothing_is_unpickled_or_executed_from_files():
    # Builtin eval/exec, not methods such as module.eval().
    unsafe = re.compile(r"pickle\.loads?\(|torch\.load\((?![^)]*weights_only=True)|(?<![.\w])eval\(|(?<![.\w])exec\(|shell=True|os\.system\(")
    offenders = []
    for folder in (support.REPO / "gpt1cli", support.REPO / "kernels", support.REPO / "benchmarks"):
        for path in sorted(folder.rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if unsafe.search(line):
                    offenders.append(f"{path}:{number}: {line.strip()}")
    assert offenders == []
