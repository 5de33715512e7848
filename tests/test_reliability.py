"""Faults: hard kills, graceful stops, full disks and non-finite steps lose nothing."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt1cli.data.pipeline import tokenize_corpus
from gpt1cli.errors import Gpt1Error
from gpt1cli.train.checkpoint import load_checkpoint
from gpt1cli.train.pretrain import PretrainConfig, pretrain
from gpt1cli.verify import verify

pytestmark = pytest.mark.slow

WORDS = ("a checkpoint is written under a temporary name and renamed so that a crash at any moment leaves "
         "the previous one whole while training goes on from the step it reached").split()
RUN = ["--preset", "tiny", "--batch-size", "4", "--eval-every", "5", "--eval-tokens", "128", "--log-every", "1",
       "--ckpt-every", "1", "--keep", "2", "-q"]
PACKAGE = Path(__file__).resolve().parents[1] / "gpt1cli"


def write_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for _ in range(documents):
            handle.write(" ".join(rng.choice(WORDS) for _ in range(60)) + "\n\n")
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    corpus = write_corpus(root / "corpus.txt", 300)
    tokenize_corpus([str(corpus)], root / "shards", vocab_size=300, val_fraction=0.05, show_progress=False)
    return root / "shards"


def gpt1_process(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "gpt1cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, **kwargs)


def gpt1(*args: str, **kwargs) -> subprocess.CompletedProcess:
    process = gpt1_process(*args, **kwargs)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out.decode(), err.decode())


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def wait_for_step(run: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        path = run / "metrics.jsonl"
        if path.exists() and any(f'"step": {step},' in line for line in path.read_text().splitlines()):
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory) -> dict[int, float]:
    run = tmp_path_factory.mktemp("straight") / "run"
    result = gpt1("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "24", *RUN)
    assert result.returncode == 0, result.stderr
    return losses(run)


def test_sigkill_at_random_points_then_resume_reaches_the_same_loss(shards, uninterrupted, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(7)
    kills = 0
    args = ["pretrain", "--shards", str(shards), "--out", str(run), "--steps", "24", *RUN]
    process = gpt1_process(*args)
    for _ in range(4):
        # Let it reach a step, then kill it a random moment later: often inside a checkpoint write.
        wait_for_step(run, 1, process)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        checkpoint = load_checkpoint(run)  # the latest checkpoint is always complete and loads
        assert all(check.ok for check in verify(run))
        # No visible step folder is ever half-deleted: pruning renames to a hidden trash name first.
        for folder in (run / "checkpoints").glob("step_*"):
            assert (folder / "checkpoint.json").is_file(), f"{folder.name} is incomplete after SIGKILL"
        process = gpt1_process("pretrain", "--shards", str(shards), "--out", str(run), "--resume", "-q")
        assert checkpoint.step >= 1
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    assert kills >= 2
    resumed = losses(run)
    assert resumed[24] == uninterrupted[24]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert not list((run / "checkpoints").glob(".trash-*"))
    # Every line of the metrics log parses, even after kills mid-write.
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def _train_records(run: Path) -> int:
    path = run / "metrics.jsonl"
    return sum('"kind": "train"' in line for line in path.read_text().splitlines()) if path.exists() else 0


def test_sigkill_inside_training_steps_and_checkpoint_writes_never_breaks_latest(shards, uninterrupted, tmp_path):
    """Each kill lands within a few milliseconds of a step this process trained itself, so most
    land inside a checkpoint write (weights, trainer state, the rename, `latest`, pruning)."""
    run = tmp_path / "run"
    rng = random.Random(11)
    process = gpt1_process("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "24", *RUN)
    kills = 0
    while kills < 5:
        seen = _train_records(run)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None and _train_records(run) <= seen:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.04))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        for folder in (run / "checkpoints").glob("step_*"):
            assert (folder / "checkpoint.json").is_file(), f"{folder.name} is incomplete after SIGKILL"
        if (run / "checkpoints" / "latest").exists():
            assert load_checkpoint(run).step >= 1
            assert all(check.ok for check in verify(run)), [c for c in verify(run) if not c.ok]
        # else killed before its first checkpoint: --resume starts the run again (as a requeued job)
        process = gpt1_process("pretrain", "--shards", str(shards), "--out", str(run), "--resume", "-q")
    assert process.wait(timeout=300) == 0, process.stderr.read().decode()
    assert kills >= 3
    resumed = losses(run)
    assert resumed.get(24) == uninterrupted[24], (run / "metrics.jsonl").read_text()
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_sigint_writes_a_checkpoint_and_exits_75_then_resume_matches(shards, uninterrupted, tmp_path):
    run = tmp_path / "run"
    process = gpt1_process("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "24",
                           *[a if a != "1" or i != RUN.index("--ckpt-every") + 1 else "1000" for i, a in enumerate(RUN)])
    wait_for_step(run, 3, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 75, err.decode()
    assert b"continue with --resume" in err
    stopped = load_checkpoint(run).step
    assert stopped >= 3
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "stop" and records[-1]["step"] == stopped
    result = gpt1("pretrain", "--shards", str(shards), "--out", str(run), "--resume", "-q")
    assert result.returncode == 0, result.stderr
    assert losses(run)[24] == uninterrupted[24]


def test_sigterm_stops_gracefully_and_a_second_sigint_stops_at_once(shards, tmp_path):
    run = tmp_path / "run"
    process = gpt1_process("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "100000", *RUN)
    wait_for_step(run, 2, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 75
    # Twice in a row: the second signal interrupts without waiting for the step to end.
    process = gpt1_process("pretrain", "--shards", str(shards), "--out", str(run), "--resume", "--steps", "100000", "-q")
    wait_for_step(run, load_checkpoint(run).step + 2, process)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode in (75, 130)
    load_checkpoint(run)  # whatever happened, the latest checkpoint loads


def test_a_full_disk_fails_cleanly_and_keeps_the_previous_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    first = gpt1("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "6", "--stop-after", "2", *RUN)
    assert first.returncode == 0, first.stderr
    before = load_checkpoint(run)
    size = (before.path / "model.safetensors").stat().st_size

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    result = gpt1("pretrain", "--shards", str(shards), "--out", str(run), "--resume", preexec_fn=small_files)
    assert result.returncode == 2
    assert "error: cannot write checkpoint" in result.stderr and "previous checkpoint is intact" in result.stderr
    assert "Traceback" not in result.stderr
    after = load_checkpoint(run)
    assert after.path == before.path and after.step == 2
    assert all(check.ok for check in verify(run))
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_non_finite_steps_are_skipped_then_the_run_stops_with_its_last_good_checkpoint(shards, tmp_path, monkeypatch):
    from gpt1cli.model.gpt import GPT

    real_forward = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, **kwargs):
        out = real_forward(self, idx, **kwargs)
        if kwargs.get("targets") is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 3 or calls["n"] >= 6:
                return out * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)
    run = tmp_path / "run"
    config = PretrainConfig(shards=str(shards), out=str(run), steps=20, batch_size=4, eval_every=100, ckpt_every=1,
                            log_every=1, max_bad_steps=3, keep=10)
    with pytest.raises(Gpt1Error, match=r"3 non-finite steps in a row at step 8"):
        pretrain(config, show_progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "skip"] == [3, 6, 7, 8]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 4, 5]
    assert load_checkpoint(run).step == 5  # the last good step
    assert all(np.isfinite(t.numpy()).all() for t in load_checkpoint(run).state_dict.values())


def test_killed_tokenize_leaves_no_manifest_and_a_rerun_resumes_by_shard(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", 6000, seed=3)
    reference = tmp_path / "reference"
    out = tmp_path / "out"
    args = ["tokenize", str(corpus), "--out", str(out), "--vocab-size", "300", "--tokens-per-shard", "20000", "-q"]
    process = gpt1_process(*args)
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
    result = gpt1(*args)
    assert result.returncode == 0, result.stderr
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
    for folder in (PACKAGE, PACKAGE.parent / "kernels", PACKAGE.parent / "benchmarks"):
        for path in sorted(folder.rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if unsafe.search(line):
                    offenders.append(f"{path}:{number}: {line.strip()}")
    assert offenders == []
