"""`gpt1 finetune` as a batch job: plain progress lines, the plan line, --dry-run, --device,
--precision (the fp16 loss scaler resumes exactly), the last and the best checkpoint, --patience."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

import support
from support import FINETUNE_ARGS, assert_ok, assert_one_error_line, read_jsonl, run_main, task_file
from gpt1cli.checkpoint import load_checkpoint
from gpt1cli.errors import TrainingStopped
from gpt1cli.tasks import training
from gpt1cli.tasks.generative import GenerativeConfig, finetune_generate

BAR_CHARACTERS = re.compile("[\u2500-\u259f\u2800-\u28ff]|\r|\x1b\\[")


def classify_args(task_assets, out, *extra) -> list:
    return ["finetune", "--task", "classify", "--train", task_file(task_assets, "classify", "train"), "--val",
            task_file(task_assets, "classify", "val"), "--from", task_assets.run, "--out", out, *extra]


def tree(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def pointer(run: Path, name: str) -> str:
    return (run / "checkpoints" / name).read_text().strip()


# ---------------------------------------------------------------------------------------------
# Output that is not a terminal


def test_piped_finetune_prints_the_plan_and_a_plain_line_every_log_every_steps(task_assets, tmp_path, capsys):
    out = tmp_path / ("a-long-fine-tuning-directory-name-" * 4) / "run"
    result = assert_ok(run_main(classify_args(task_assets, out, "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                                              "--device", "cpu", "--log-every", "3"), capsys))
    assert not BAR_CHARACTERS.search(result.err), result.err
    lines = result.err_lines
    config = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "config"][0]
    assert lines[0].startswith(f"{config['parameters']:,} parameters, ")
    assert "on cpu; fp32; 32 examples, 8 steps (4 per epoch); " in lines[0]
    steps = [int(m.group(1)) for line in lines if (m := re.match(r"fine-tuning classify: step (\d+)/8  ", line))]
    assert steps == [3, 6, 8]  # every --log-every steps and the last
    train = {r["step"]: r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"}
    for line in (line for line in lines if line.startswith("fine-tuning classify: ")):
        step = int(re.match(r"fine-tuning classify: step (\d+)/", line).group(1))
        assert f"  loss {train[step]['loss']:.4f}  lr {train[step]['lr']:.3e}  " in line, line
        assert re.search(r"  [\d,.]+ examples/s  (ETA|done in) \d+:\d\d:\d\d$", line), line
    assert [line for line in lines if line.startswith("step ")] == [
        f"step {r['step']}: val accuracy {r['accuracy']:.4f}" for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(result.out.strip().splitlines()) == 1 and f"checkpoints in {out}/checkpoints" in result.out


def test_quiet_finetune_prints_only_its_summary(task_assets, tmp_path, capsys):
    result = assert_ok(run_main(classify_args(task_assets, tmp_path / "run", *FINETUNE_ARGS), capsys))
    assert result.err == ""


# ---------------------------------------------------------------------------------------------
# --dry-run


def test_dry_run_reports_the_plan_and_writes_nothing(task_assets, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    result = assert_ok(run_main(classify_args(task_assets, out, *FINETUNE_ARGS, "--dry-run"), capsys))
    assert not (tmp_path / "new").exists()
    report = dict(line.split(None, 1) if not line.startswith(("FLOPs", "memory")) else
                  (" ".join(line.split()[:3 if line.startswith("FLOPs") else 2]),
                   line.split(None, 3 if line.startswith("FLOPs") else 2)[-1])
                  for line in result.out.strip().splitlines()[1:])
    assert result.out.startswith(f"dry run: nothing written ({out} untouched)")
    assert report["steps"].startswith("0 -> 2 (1 epochs of 2 steps of 16 examples")
    assert report["examples"] == "32 train, 15 val"
    assert report["precision"] == "fp32"
    assert "metric=accuracy" in report["settings"] and "lr=0.001" in report["settings"]

    # the same command for real: the parameters and FLOPs the dry run announced
    assert_ok(run_main(classify_args(task_assets, out, *FINETUNE_ARGS), capsys))
    config = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "config"][0]
    assert report["parameters"] == f"{config['parameters']:,}"
    from gpt1cli.config import ModelConfig
    from gpt1cli.train.memory import flops_per_token

    assert report["FLOPs per token"].startswith(f"{flops_per_token(ModelConfig.from_dict(config['model'])):.4g} ")

    # on a run that exists: the error the run would give, or (--overwrite, --resume) a report; nothing changes
    before = tree(out)
    assert_one_error_line(run_main(classify_args(task_assets, out, *FINETUNE_ARGS, "--dry-run"), capsys),
                          "already holds a run (finished at step 2)")
    assert_ok(run_main(classify_args(task_assets, out, *FINETUNE_ARGS, "--dry-run", "--overwrite"), capsys))
    finished = assert_ok(run_main(["finetune", "--out", out, "--resume", "--dry-run", "-q"], capsys))
    assert "finished already" in finished.out
    assert tree(out) == before


def test_dry_run_of_a_stopped_run_reports_where_it_would_continue(task_assets, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = training.warmup_linear

    def stop_at(step, **kwargs):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return real(step, **kwargs)

    monkeypatch.setattr(training, "warmup_linear", stop_at)
    result = run_main(classify_args(task_assets, out, "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                                    "--device", "cpu", "-q"), capsys)
    assert result.code == 75, result.err
    monkeypatch.undo()
    before = tree(out)
    report = assert_ok(run_main(["finetune", "--out", out, "--resume", "--dry-run"], capsys))
    assert "(resumed from its training state)" in report.out
    assert re.search(r"^steps +3 -> 8 ", report.out, re.M), report.out
    assert tree(out) == before


# ---------------------------------------------------------------------------------------------
# --device and --precision


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_finetune_on_cuda_1_without_a_gpu_is_one_clear_error(task_assets, tmp_path, capsys):
    result = run_main(classify_args(task_assets, tmp_path / "run", "--device", "cuda:1", "-q"), capsys)
    assert_one_error_line(result, "--device cuda:1 was asked for but no CUDA GPU is visible; use --device cpu")
    assert not (tmp_path / "run").exists()


def test_bf16_fine_tuning_on_cpu_is_recorded(task_assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert_ok(run_main(classify_args(task_assets, out, *FINETUNE_ARGS, "--precision", "bf16"), capsys))
    config = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "config"][0]
    assert config["precision"] == "bf16" and config["config"]["precision"] == "bf16"
    state = load_checkpoint(out / "train-state", with_trainer=True)
    assert state.trainer_meta["config"]["precision"] == "bf16" and state.trainer_meta["grad_scaler"] is None


def test_fp16_stop_and_resume_restore_the_loss_scaler_exactly(task_assets, tmp_path, monkeypatch):
    rows = [{"prompt": f"the {w} sat", "completion": f"a {w} ran"} for w in support.NEUTRAL_WORDS[:20]]
    train = support.write_task_jsonl(tmp_path / "train.jsonl", rows[:16])
    val = support.write_task_jsonl(tmp_path / "val.jsonl", rows[16:])

    def config(out, **kw):
        return GenerativeConfig(train=str(train), val=str(val), from_run=str(task_assets.run), out=str(out), lr=1e-3,
                                batch_size=4, epochs=2, eval_every=3, device="cpu", precision="fp16", **kw)

    straight = finetune_generate(config(tmp_path / "a"), show_progress=False)
    real = training.warmup_linear

    def stop_at(step, **kwargs):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return real(step, **kwargs)

    monkeypatch.setattr(training, "warmup_linear", stop_at)
    with pytest.raises(TrainingStopped):
        finetune_generate(config(tmp_path / "b"), show_progress=False)
    monkeypatch.undo()
    stopped = load_checkpoint(tmp_path / "b" / "train-state", with_trainer=True).trainer_meta
    assert stopped["precision"] == "fp16" and stopped["grad_scaler"]["scale"] > 0
    resumed = finetune_generate(config(tmp_path / "b", resume=True), show_progress=False)
    assert resumed["steps"] == straight["steps"] == 8 and resumed["overflow_steps"] == straight["overflow_steps"]
    records = [[{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(run / "metrics.jsonl")
                if r["kind"] in ("train", "eval", "overflow")] for run in (tmp_path / "a", tmp_path / "b")]
    assert records[0] == records[1]  # every loss, overflow and metric, bit for bit
    states = [load_checkpoint(run / "train-state", with_trainer=True).trainer_meta for run in (tmp_path / "a", tmp_path / "b")]
    assert states[0]["grad_scaler"] == states[1]["grad_scaler"]
    assert load_checkpoint(tmp_path / "b").meta["weights_blake2b"] == load_checkpoint(tmp_path / "a").meta["weights_blake2b"]


# ---------------------------------------------------------------------------------------------
# The last and the best checkpoint; --patience


def expected_stop(evals: list[dict], metric: str, patience: int) -> tuple[int, int]:
    """(best step, step --patience stops at) from the evaluation records (ties are no improvement)."""
    best, best_step, since = None, None, 0
    for record in evals:
        if best is None or record[metric] > best:
            best, best_step, since = record[metric], record["step"], 0
        else:
            since += 1
        if since >= patience:
            return best_step, record["step"]
    raise AssertionError("no early stop in these records")


def test_patience_stops_early_and_keeps_the_last_and_the_best(task_assets, tmp_path, capsys):
    out = tmp_path / "run"
    # a learning rate too small to change a prediction: no evaluation after the first is better
    result = assert_ok(run_main(classify_args(task_assets, out, "--epochs", "4", "--batch-size", "8", "--lr", "1e-9",
                                              "--eval-every", "1", "--patience", "2", "--device", "cpu", "-q"), capsys))
    log = read_jsonl(out / "metrics.jsonl")
    evals = [r for r in log if r["kind"] == "eval"]
    best_step, stop_step = expected_stop(evals, "accuracy", 2)
    assert (best_step, stop_step) == (1, 3)
    assert evals[-1]["step"] == stop_step and max(r["step"] for r in log if r["kind"] == "train") == stop_step
    assert [r for r in log if r["kind"] == "early_stop"][0]["step"] == stop_step
    assert f"stopped early at step {stop_step} (--patience)" in result.out
    assert f"(best: step {best_step}, latest: step {stop_step})" in result.out

    # checkpoints/: the last evaluated model (latest) and the best, nothing else
    folders = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert folders == [f"step_{best_step:08d}", f"step_{stop_step:08d}"]
    assert pointer(out, "latest") == f"step_{stop_step:08d}" and pointer(out, "best") == f"step_{best_step:08d}"
    last = json.loads((out / "checkpoints" / f"step_{stop_step:08d}" / "checkpoint.json").read_text())
    best = json.loads((out / "checkpoints" / f"step_{best_step:08d}" / "checkpoint.json").read_text())
    assert last["metrics"]["val"]["accuracy"] == evals[-1]["accuracy"]
    assert best["metrics"]["val"]["accuracy"] == evals[0]["accuracy"] and best["kind"] == last["kind"] == "finetune"

    # an early-stopped run is finished: --resume reports it and runs nothing
    again = assert_ok(run_main(["finetune", "--out", out, "--resume", "-q"], capsys))
    assert "finished already" in again.out and f"stopped early at step {stop_step}" in again.out
    assert read_jsonl(out / "metrics.jsonl") == log


def test_without_patience_the_run_goes_to_the_end_and_the_best_survives_pruning(task_assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert_ok(run_main(classify_args(task_assets, out, "--epochs", "2", "--batch-size", "8", "--lr", "1e-9",
                                     "--eval-every", "1", "--device", "cpu", "-q"), capsys))
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == list(range(1, 9))
    best_step = next(r["step"] for r in evals if r["accuracy"] == max(e["accuracy"] for e in evals))
    expected = sorted({f"step_{best_step:08d}", "step_00000008"})
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")) == expected
    assert pointer(out, "latest") == "step_00000008" and pointer(out, "best") == f"step_{best_step:08d}"


def test_a_state_written_without_its_checkpoint_gets_it_on_resume(task_assets, tmp_path, capsys, monkeypatch):
    """Killed between the training state and checkpoints/ at an evaluation: --resume writes the
    missing checkpoint from the state's weights (they are that step's) and ends as an
    uninterrupted run does."""
    args = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--eval-every", "2", "--device", "cpu", "-q"]
    straight, out = tmp_path / "straight", tmp_path / "run"
    assert_ok(run_main(classify_args(task_assets, straight, *args), capsys))
    real = training.warmup_linear

    def stop_at(step, **kwargs):
        if step == 3:  # the request is honoured after step 4, an evaluation
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        return real(step, **kwargs)

    monkeypatch.setattr(training, "warmup_linear", stop_at)
    assert run_main(classify_args(task_assets, out, *args), capsys).code == 75
    monkeypatch.undo()
    assert load_checkpoint(out / "train-state", with_trainer=True).step == 4
    shutil.rmtree(out / "checkpoints" / "step_00000004")  # what the kill left: the state of step 4, no checkpoint
    (out / "checkpoints" / "latest").write_text("step_00000002\n")
    if pointer(out, "best") == "step_00000004":
        (out / "checkpoints" / "best").write_text("step_00000002\n")
    assert_ok(run_main(["finetune", "--out", out, "--resume", "-q"], capsys))
    for name in ("latest", "best"):
        assert pointer(out, name) == pointer(straight, name)
        a, b = (json.loads((run / "checkpoints" / pointer(run, name) / "checkpoint.json").read_text())
                for run in (out, straight))
        assert a["weights_blake2b"] == b["weights_blake2b"] and a["metrics"] == b["metrics"]
