"""Training runs in batch jobs and on chosen hardware: plain progress lines when standard error is
not a terminal, never-wrapped output, the plan line a run starts with, ``--device cuda:N``, and
``--precision`` (bf16 and fp16 autocast, the fp16 loss scaler and its place in the train-state)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import support
from gpt1cli import progress, runtime
from gpt1cli.errors import Gpt1Error
from gpt1cli.train.distributed import World
from gpt1cli.train.loop import MIN_LOSS_SCALE, SkippedSteps, Trainer
from gpt1cli.train.metrics_log import MetricsLog

BAR_CHARACTERS = re.compile("[\u2500-\u259f\u2800-\u28ff]|\r|\x1b\\[")  # box drawing, blocks, braille spinners, redraws

SMALL = ["--preset", "tiny", "--n-ctx", "32", "--batch-size", "4", "--lr", "3e-3", "--eval-every", "100",
         "--eval-tokens", "96", "--ckpt-every", "100", "--seed", "3", "--device", "cpu"]


def pretrain_cli(capsys, shards, out, *extra):
    return support.run_main(["pretrain", "--shards", shards, "--out", out, *SMALL, *extra], capsys)


def trainer_json(run) -> dict:
    return json.loads((support.latest_folder(run) / "trainer.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# 1. Output that is not a terminal


def test_piped_pretrain_prints_plain_lines_every_log_every_steps_and_long_paths_whole(assets, tmp_path, capsys):
    out = tmp_path / ("a-run-directory-with-a-long-name-" * 4) / "run"
    result = pretrain_cli(capsys, assets.shards, out, "--steps", "6", "--log-every", "2")
    support.assert_ok(result)
    assert not BAR_CHARACTERS.search(result.err), result.err
    lines = result.err_lines
    # the plan line first: parameters, FLOPs per token, memory, precision
    assert re.fullmatch(r"[\d,]+ parameters, [\d.e+]+ FLOPs per token, about [\d.,]+ [KMG]iB of memory.* on cpu; fp32; .*",
                        lines[0]), lines[0]
    progress_lines = [line for line in lines if line.startswith("pretraining: ")]
    assert [re.match(r"pretraining: step (\d+)/6  ", line).group(1) for line in progress_lines] == ["2", "4", "6"]
    train = {r["step"]: r for r in support.records(out, "train")}
    for line in progress_lines:
        step = int(re.match(r"pretraining: step (\d+)/", line).group(1))
        assert f"loss {train[step]['loss']:.4f}  lr {train[step]['lr']:.3e}  " in line, line
        assert re.search(r"  [\d,]+ tokens/s  (ETA \d+:\d\d:\d\d|done in \d+:\d\d:\d\d)$", line), line
    assert re.search(r"  done in \d+:\d\d:\d\d$", progress_lines[-1]), progress_lines[-1]
    # the summary on standard output: one line, the long path whole
    assert len(result.out.strip().splitlines()) == 1
    assert f"checkpoints in {out}/checkpoints" in result.out


def test_quiet_silences_the_plan_and_the_progress_lines(assets, tmp_path, capsys):
    result = pretrain_cli(capsys, assets.shards, tmp_path / "run", "--steps", "2", "--log-every", "1", "-q")
    support.assert_ok(result)
    assert result.err == ""


def test_the_console_never_wraps_when_not_a_terminal(capsys):
    out = progress.console()
    assert not out.is_terminal and out.width == progress.WIDE
    text = "x" * 300 + " " + "/y" * 200
    out.print(text)
    err = progress.console(stderr=True)
    err.print(text)
    captured = capsys.readouterr()
    assert captured.out == text + "\n" and captured.err == text + "\n"


def test_a_plain_bar_writes_the_callers_status_and_otherwise_tenths_and_the_end(capsys, monkeypatch):
    with progress.progress_bar("training", 10, unit="step", completed=4, every_s=None) as bar:
        for step in range(5, 11):
            bar.advance(1)
            if step % 3 == 0:
                bar.update(status=f"loss {step}")
        bar.log("an evaluation")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ETA")[0].split("  done")[0] for line in lines] == [
        "training: step 6/10  loss 6", "training: step 9/10  loss 9", "an evaluation"]

    clock = iter(range(0, 1000, 1))  # one second per reading
    monkeypatch.setattr(progress.time, "perf_counter", lambda: float(next(clock)))
    with progress.progress_bar("encoding", 1000) as bar:
        for _ in range(100):
            bar.advance(10)  # a tenth every 10 calls: 10 lines, none more (every_s 30 s is never reached first)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"encoding: {p:.1f}%" for p in range(10, 101, 10)]
    assert lines[-1].startswith("encoding: 100.0%  done in 0:")

    with progress.progress_bar("spinning", None) as bar:
        bar.advance(3)
    assert capsys.readouterr().err.startswith("spinning: elapsed 0:")

    with progress.progress_bar("silent", 10, enabled=False) as bar:
        bar.advance(10)
        bar.update(status="x")
        bar.log("y")
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# 2. Devices


def test_cuda_n_is_a_clear_error_without_that_gpu_and_cpu_runs(assets, tmp_path, capsys, monkeypatch):
    if not torch.cuda.is_available():
        result = pretrain_cli(capsys, assets.shards, tmp_path / "run", "--steps", "1", "--device", "cuda:1", "-q")
        support.assert_one_error_line(result, "--device cuda:1 was asked for but no CUDA GPU is visible; use --device cpu")
        assert not (tmp_path / "run").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = pretrain_cli(capsys, assets.shards, tmp_path / "run", "--steps", "1", "--device", "cuda:2", "-q")
    support.assert_one_error_line(result, "--device cuda:2: only 2 CUDA GPUs are visible (cuda:0 to cuda:1)")
    result = support.run_main(["finetune", "--task", "classify", "--train", assets.corpus, "--val", assets.corpus,
                               "--from", assets.run, "--out", tmp_path / "ft", "--device", "cuda:7", "-q"], capsys)
    support.assert_one_error_line(result, "--device cuda:7: only 2 CUDA GPUs are visible")
    monkeypatch.undo()
    result = pretrain_cli(capsys, assets.shards, tmp_path / "cpu", "--steps", "1", "--device", "cpu", "-q")
    support.assert_ok(result)


@pytest.mark.parametrize("value", ["cuda:x", "tpu", "cpu:0", "cuda:-1", "cuda:01"])
def test_a_malformed_device_is_refused_while_parsing(assets, tmp_path, capsys, value):
    result = pretrain_cli(capsys, assets.shards, tmp_path / "run", "--device", value)
    support.assert_one_error_line(result, f"--device must be auto, cpu, cuda or cuda:N (N the index of a GPU), not {value!r}")


def test_cuda_n_under_torchrun_is_refused_with_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Gpt1Error, match=r"--device cuda:1 names one GPU, but under torchrun each process uses the GPU "
                                        r"of its LOCAL_RANK: pass --device cuda \(choose the GPUs with CUDA_VISIBLE_DEVICES\)"):
        runtime.pick_device("cuda:1")


# ---------------------------------------------------------------------------------------------
# 3. Precision


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_on_cpu_runs_and_is_recorded(assets, tmp_path, capsys, precision):
    out = tmp_path / "run"
    result = pretrain_cli(capsys, assets.shards, out, "--steps", "2", "--log-every", "1", "--precision", precision)
    support.assert_ok(result)
    assert f"on cpu; {precision}; " in result.err_lines[0]
    assert f", {precision}); checkpoints in " in result.out
    config = [r for r in support.read_metrics(out) if r["kind"] == "config"][0]
    assert config["precision"] == precision and config["config"]["precision"] == precision
    meta = trainer_json(out)
    assert meta["config"]["precision"] == precision and meta["precision"] == precision
    assert meta["grad_scaler"] is None
    assert all(math.isfinite(r["loss"]) for r in support.records(out, "train"))


def test_auto_precision_is_recorded_as_auto_and_resolved_in_the_log(assets, tmp_path, capsys):
    out = tmp_path / "run"
    support.assert_ok(pretrain_cli(capsys, assets.shards, out, "--steps", "1", "-q"))
    config = [r for r in support.read_metrics(out) if r["kind"] == "config"][0]
    assert config["config"]["precision"] is None
    assert config["precision"] == runtime.resolve_precision(None, torch.device("cpu")) == "fp32"


def test_bf16_changes_what_cpu_training_computes(assets, tmp_path, capsys):
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        support.assert_ok(pretrain_cli(capsys, assets.shards, out, "--steps", "2", "--log-every", "1", "--precision",
                                       precision, "-q"))
        losses[precision] = [r["loss"] for r in support.records(out, "train")]
    assert losses["fp32"] != losses["bf16"]  # autocast is really on
    assert losses["fp32"] == pytest.approx(losses["bf16"], rel=0.05)


def test_fp16_resume_restores_the_loss_scaler_and_is_exact(assets, tmp_path, capsys):
    args = ["--steps", "6", "--log-every", "1", "--precision", "fp16", "-q"]
    full, split = tmp_path / "full", tmp_path / "split"
    support.assert_ok(pretrain_cli(capsys, assets.shards, full, *args))
    support.assert_ok(pretrain_cli(capsys, assets.shards, split, *args, "--stop-after", "3"))
    stopped = trainer_json(split)
    assert stopped["precision"] == "fp16" and stopped["config"]["precision"] == "fp16"
    scaler = stopped["grad_scaler"]
    assert set(scaler) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    overflows = [r["step"] for r in support.records(split, "overflow")]
    # the scale started at 2^16 and halved once per overflow; the growth tracker counts applied steps since
    assert scaler["scale"] == 2.0**16 / 2 ** len(overflows)
    assert scaler["_growth_tracker"] == 3 - (max(overflows) if overflows else 0)
    support.assert_ok(support.run_main(["pretrain", "--shards", assets.shards, "--out", split, "--resume", "-q"], capsys))
    assert support.train_losses(split) == support.train_losses(full)  # bit for bit
    assert trainer_json(split)["grad_scaler"] == trainer_json(full)["grad_scaler"]
    assert [r["step"] for r in support.records(split, "overflow")] == [r["step"] for r in support.records(full, "overflow")]


def test_a_corrupt_loss_scaler_state_is_one_error(assets, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--steps", "4", "--precision", "fp16", "-q"]
    support.assert_ok(pretrain_cli(capsys, assets.shards, run, *args, "--stop-after", "2"))
    path = support.latest_folder(run) / "trainer.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["grad_scaler"]["scale"] = -1.0
    path.write_text(json.dumps(meta), encoding="utf-8")
    result = support.run_main(["pretrain", "--shards", assets.shards, "--out", run, "--resume", "-q"], capsys)
    support.assert_one_error_line(result, "records a loss scaler state that is not one: it is corrupt")


def _linear_trainer(precision: str) -> tuple[Trainer, torch.nn.Linear]:
    model = torch.nn.Linear(4, 1)
    trainer = Trainer(model, world=World(), device=torch.device("cpu"), parallel="ddp", lr=0.1, weight_decay=0.0,
                      grad_clip=1.0, seed=0, schedule=lambda step: 0.1, log=MetricsLog(None), precision=precision)
    return trainer, model


def test_an_fp16_overflow_is_the_scalers_skip_not_a_bad_step():
    trainer, model = _linear_trainer("fp16")
    skipped = SkippedSteps(bad_steps=2)
    before = model.weight.detach().clone()

    def overflowing() -> dict:
        with trainer.autocast():
            loss = model(torch.ones(2, 4)).float().pow(2).mean() * 1e-3  # no real overflow at 2^16
        trainer.backward(loss)
        model.weight.grad[0, 0] = math.inf  # what an overflowed fp16 backward leaves
        return {"loss": float(loss.detach())}

    bar = progress.Bar(None, None)
    result = trainer.step(0, overflowing, skipped, bar)
    assert result.overflow and result.good and not result.applied
    assert (skipped.bad_steps, skipped.skipped_steps, skipped.overflow_steps, skipped.last_step_bad) == (2, 0, 1, False)
    assert trainer.scaler.get_scale() == 2.0**15
    assert torch.equal(model.weight, before)

    def fine() -> dict:
        with trainer.autocast():
            loss = model(torch.ones(2, 4)).float().pow(2).mean() * 1e-3  # no real overflow at 2^16
        trainer.backward(loss)
        return {"loss": float(loss.detach())}

    result = trainer.step(1, fine, skipped, bar)
    assert result.applied and skipped.bad_steps == 0 and not torch.equal(model.weight, before)

    # once the scale is below MIN_LOSS_SCALE, a non-finite gradient is a bad step; the scaler stays as it was
    trainer.scaler.update(MIN_LOSS_SCALE / 2)
    result = trainer.step(2, overflowing, skipped, bar)
    assert not result.good and skipped.bad_steps == 1 and skipped.skipped_steps == 1
    assert trainer.scaler.get_scale() == MIN_LOSS_SCALE / 2
    # a non-finite loss is a bad step whatever the scale
    trainer.scaler.update(2.0**10)
    result = trainer.step(3, lambda: {**fine(), "loss": math.nan}, skipped, bar)
    assert not result.good and skipped.bad_steps == 2 and trainer.scaler.get_scale() == 2.0**10


def test_the_trainer_state_carries_the_scaler_only_under_fp16():
    assert _linear_trainer("fp32")[0].train_state().scaler is None
    assert _linear_trainer("bf16")[0].train_state().scaler is None
    assert _linear_trainer("fp16")[0].train_state().scaler["scale"] == 2.0**16


def test_precision_values_are_checked():
    with pytest.raises(Gpt1Error, match=r"--precision must be one of auto, bf16, fp16, fp32, not 'fp8'"):
        runtime.resolve_precision("fp8", torch.device("cpu"))
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert runtime.resolve_precision("fp16", torch.device("cpu")) == "fp16"
    with runtime.precision_scope("bf16"):
        with runtime.autocast(torch.device("cpu")):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with runtime.autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
