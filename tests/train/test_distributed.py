"""torchrun data parallelism on CPU (gloo, 2 processes): DDP and FSDP2 give the one-process model."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import support
from gpt1cli.data.pipeline import tokenize_corpus

pytestmark = pytest.mark.slow

TEXT_WORDS = ("the model reads a long sequence of tokens and learns to predict the next one from those before it "
              "while the optimiser follows the gradient of the loss through every layer of the network").split()
TINY = ["--preset", "tiny", "--batch-size", "8", "--dropout", "0", "--eval-every", "2", "--eval-tokens", "256",
        "--log-every", "1", "-q"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist")
    corpus = support.write_sentences(root / "corpus.txt", TEXT_WORDS, documents=400, length=40)
    tokenize_corpus([str(corpus)], root / "shards", vocab_size=300, val_fraction=0.05, show_progress=False)
    return root / "shards"


def torchrun(*args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``gpt1`` under torchrun; FSDP2 on gloo aborts rarely at start-up, so retry once."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "gpt1cli", *args]
    for attempt in range(2):
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=support.cli_env())
        if result.returncode == 0 or attempt == 1 or "SIGABRT" not in result.stderr:
            return result
    return result


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def single(shards, tmp_path_factory) -> Path:
    """The reference: one process, gradient accumulation 2, the same global batch of 8."""
    run = tmp_path_factory.mktemp("single") / "run"
    support.assert_ok(support.run_subprocess(["pretrain", "--shards", shards, "--out", run, "--steps", "4", "--grad-accum", "2",
                                              *TINY]))
    return run


def test_ddp_two_processes_match_one_process_with_accumulation(shards, single, tmp_path):
    run = tmp_path / "ddp"
    result = torchrun("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "4", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_difference(weights(run, 4), weights(single, 4)) < 1e-5
    ddp_losses, single_losses = support.train_losses(run), support.train_losses(single)
    assert sorted(ddp_losses) == [1, 2, 3, 4]
    for step, loss in single_losses.items():
        assert ddp_losses[step] == pytest.approx(loss, abs=1e-5)
    # Only rank 0 logs: one config record, one record per step.
    records = support.read_metrics(run)
    assert [r["kind"] for r in records].count("config") == 1
    assert records[0]["world_size"] == 2


def test_two_process_run_resumes_on_one_process(shards, single, tmp_path):
    run = tmp_path / "resumed"
    first = torchrun("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "4", "--stop-after", "2", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run / "checkpoints" / "step_00000002").is_dir()
    support.assert_ok(support.run_subprocess(["pretrain", "--shards", shards, "--out", run, "--resume", "-q"]))
    assert support.train_losses(run)[4] == pytest.approx(support.train_losses(single)[4], abs=1e-5)
    assert max_difference(weights(run, 4), weights(single, 4)) < 1e-5


def test_fsdp2_matches_one_process(shards, single, tmp_path):
    run = tmp_path / "fsdp"
    result = torchrun("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "4", "--parallel", "fsdp", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert max_difference(weights(run, 4), weights(single, 4)) < 1e-5
    # The checkpoint holds the full, gathered optimiser state: it resumes on one process.
    support.assert_ok(support.run_subprocess(["pretrain", "--shards", shards, "--out", run, "--resume", "--steps", "5", "-q"]))


def test_finetune_runs_under_ddp(shards, single, tmp_path):
    rng = random.Random(1)
    rows = []
    for _ in range(24):
        label = rng.randrange(2)
        text = " ".join(rng.choice(TEXT_WORDS[:10] if label else TEXT_WORDS[10:]) for _ in range(8))
        rows.append(json.dumps({"text": text, "label": ["no", "yes"][label]}))
    data = tmp_path / "task.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "ft"
    result = torchrun("finetune", "--task", "classify", "--train", str(data), "--val", str(data), "--from", str(single),
                      "--out", str(out), "--epochs", "1", "--batch-size", "8", "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads(next((out / "checkpoints").glob("step_*/checkpoint.json")).read_text())
    assert meta["task"]["labels"] == ["no", "yes"]
    assert 0.0 <= meta["metrics"]["val"]["accuracy"] <= 1.0


def _worker_pids(marker: str) -> dict[int, int]:
    """pid -> LOCAL_RANK of the worker processes whose command line mentions ``marker``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmdline and "torch.distributed.run" not in cmdline:
            for item in environ:
                if item.startswith(b"LOCAL_RANK="):
                    found[int(entry.name)] = int(item.split(b"=", 1)[1])
    return found


def test_a_crashed_rank_stops_every_rank(shards, tmp_path):
    run = tmp_path / "crash"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "gpt1cli",
               "pretrain", "--shards", str(shards), "--out", str(run), "--steps", "100000", "--dist-timeout", "60", *TINY]
    with support.reaped(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=support.cli_env())) as process:
        deadline = time.time() + 120
        while time.time() < deadline and not ((run / "metrics.jsonl").exists() and "train" in (run / "metrics.jsonl").read_text()):
            time.sleep(0.5)
        workers = _worker_pids(str(run))
        assert sorted(workers.values()) == [0, 1], workers
        victim = next(pid for pid, rank in workers.items() if rank == 1)
        os.kill(victim, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert b"FAILED" in stderr or b"failed" in stderr.lower()
    time.sleep(1)
    assert _worker_pids(str(run)) == {}, "a rank outlived the crash"


def test_a_run_directory_in_use_stops_every_rank_at_once(shards, tmp_path):
    """Rank 0 cannot take the run's lock: every rank must stop, none may wait in a collective."""
    from gpt1cli.locking import exclusive_output

    run = tmp_path / "locked"
    with exclusive_output(run, "run directory"):
        started = time.time()
        result = torchrun("pretrain", "--shards", str(shards), "--out", str(run), "--steps", "2", "--dist-timeout", "60",
                          *TINY)
        elapsed = time.time() - started
    assert result.returncode != 0
    assert f"is in use by another gpt1 process (PID {os.getpid()})" in result.stderr
    assert elapsed < 50  # a rank left waiting would only fail after --dist-timeout (60 s)
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
