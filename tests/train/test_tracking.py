"""Trackers fed from the metrics log's records: CSV, TensorBoard (read back with its own
EventAccumulator), W&B (a fake ``wandb`` module recording its calls), the ``--log`` rule and
the one-line errors of a missing package."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import types

import pytest

import support
from gpt1cli.errors import Gpt1Error
from gpt1cli.tracking import TRACKERS, current_records, parse_trackers, scalars, trackers_rule, wandb_mode
from gpt1cli.train.metrics_log import MetricsLog


def write_run(log: MetricsLog, steps=(1, 2, 3), eval_at=(2,)) -> None:
    """The records pre-training writes: config, train every step, eval at ``eval_at``."""
    log.write("config", config={"shards": "s", "batch_size": 4, "lr": 0.003}, model={"n_ctx": 32}, parameters=1000,
              kernels="torch", device="cpu", world_size=1)
    for step in steps:
        log.write("train", step=step, loss=5.0 - step / 10, lr=0.001 * step, grad_norm=1.5, tokens_per_s=1000.0 * step)
        if step in eval_at:
            log.write("eval", step=step, val_loss=4.5, val_ppl=90.0, val_bpb=3.25, val_tokens=512)


def read_csv(path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def tb_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


# ---------------------------------------------------------------------------------------------
# The setting


def test_the_log_rule_takes_a_comma_separated_list_and_names_every_choice():
    assert TRACKERS == ("tensorboard", "wandb", "csv")
    assert trackers_rule("tensorboard,csv", "--log") == "tensorboard,csv"
    assert trackers_rule(None, "--log") is None
    assert parse_trackers(" CSV , tensorboard,csv,") == ("csv", "tensorboard")
    assert parse_trackers("") == ()
    with pytest.raises(Gpt1Error) as info:
        trackers_rule("tensorboard,mlflow", "--log")
    message = str(info.value)
    assert "'mlflow'" in message and "tensorboard, wandb, csv" in message and "--log" in message
    with pytest.raises(Gpt1Error, match="--log must be a comma-separated list"):
        trackers_rule(["csv"], "--log")


def test_records_become_named_scalars():
    assert scalars({"kind": "train", "time": 1.0, "step": 3, "loss": 2.5, "lr": 1e-3, "lm_loss": None}) == (
        3, {"train/loss": 2.5, "train/lr": 1e-3})
    assert scalars({"kind": "eval", "step": 8, "val_loss": 4.0, "val_bpb": 3.0, "epoch": 0, "confusion": [[1]]}) == (
        8, {"val/loss": 4.0, "val/bpb": 3.0, "val/epoch": 0.0})
    assert scalars({"kind": "eval", "step": 8, "accuracy": 0.75, "examples": 40}) == (
        8, {"val/accuracy": 0.75, "val/examples": 40.0})
    assert scalars({"kind": "config", "config": {"lr": 1}, "parameters": 10}) == (None, {})
    assert scalars({"kind": "stop", "step": 5, "signal": "SIGTERM"}) == (5, {})


def test_a_resume_record_drops_the_steps_it_goes_back_over():
    records = [{"kind": "config"}, *({"kind": "train", "step": s, "loss": float(s)} for s in range(1, 6)),
               {"kind": "eval", "step": 4, "val_loss": 9.0}, {"kind": "resume", "step": 3},
               {"kind": "train", "step": 4, "loss": 40.0}]
    kept = current_records(records)
    assert [(r["kind"], r.get("step"), r.get("loss")) for r in kept] == [
        ("config", None, None), ("train", 1, 1.0), ("train", 2, 2.0), ("train", 3, 3.0), ("resume", 3, None),
        ("train", 4, 40.0)]


# ---------------------------------------------------------------------------------------------
# CSV


def test_csv_has_one_row_per_record_and_one_header_as_keys_appear_and_on_resume(tmp_path):
    run = tmp_path / "run"
    with MetricsLog(run / "metrics.jsonl", trackers="csv") as log:
        write_run(log, steps=(1, 2), eval_at=(2,))
        # the file is complete after every record, before the log is closed
        header, rows = read_csv(run / "metrics.csv")
        assert header == ["kind", "step", "time", "loss", "lr", "grad_norm", "tokens_per_s",
                          "val_loss", "val_ppl", "val_bpb", "val_tokens"]
        assert [(r["kind"], r["step"]) for r in rows] == [("train", "1"), ("train", "2"), ("eval", "2")]
        assert float(rows[1]["loss"]) == 5.0 - 2 / 10 and float(rows[1]["tokens_per_s"]) == 2000.0
        assert rows[2]["val_bpb"] == "3.25" and rows[2]["loss"] == ""
    # Resumed: the same log again, a new kind of record with new columns, then more steps.
    with MetricsLog(run / "metrics.jsonl", trackers="csv") as log:
        log.write("resume", step=2, kernels="torch", device="cpu", world_size=1)
        log.write("train", step=3, loss=4.7, lr=0.003, grad_norm=1.5, tokens_per_s=3000.0)
        log.write("skip", step=4, loss=float("nan"), grad_norm=float("inf"))
    text = (run / "metrics.csv").read_text(encoding="utf-8")
    assert text.count("kind,step,time") == 1 and text.endswith("\n")
    header, rows = read_csv(run / "metrics.csv")
    assert header[-3:] == ["kernels", "device", "world_size"]
    assert [(r["kind"], r["step"]) for r in rows] == [("train", "1"), ("train", "2"), ("eval", "2"), ("resume", "2"),
                                                      ("train", "3"), ("skip", "4")]
    assert rows[3]["device"] == "cpu" and rows[3]["loss"] == ""
    assert float(rows[4]["loss"]) == 4.7 and rows[5]["loss"] == "nan" and rows[5]["grad_norm"] == "inf"
    assert not list(run.glob(".metrics.csv.*"))  # no temporary file left behind


def test_csv_started_on_a_resume_holds_the_run_from_its_start(assets, tmp_path):
    """A real pre-training log (fixture ``assets``): every record but the config one, in order."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(assets.run / "metrics.jsonl", run / "metrics.jsonl")
    expected = [r for r in support.read_metrics(run) if r["kind"] != "config"]
    with MetricsLog(run / "metrics.jsonl", trackers="csv"):
        pass
    header, rows = read_csv(run / "metrics.csv")
    assert len(rows) == len(expected) == support.RUN_STEPS + support.RUN_STEPS // 8
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_ppl", "val_bpb"} <= set(header)
    for row, record in zip(rows, expected):
        assert row["kind"] == record["kind"] and int(row["step"]) == record["step"]
        key = "loss" if record["kind"] == "train" else "val_loss"
        assert float(row[key]) == record[key]


# ---------------------------------------------------------------------------------------------
# TensorBoard


def test_tensorboard_events_hold_the_logged_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    log = MetricsLog(run / "metrics.jsonl", trackers="tensorboard", run_config={"lr": 0.003})
    write_run(log, steps=(1, 2, 3), eval_at=(2,))
    # flushed per record: readable while the run goes on
    found = tb_scalars(run / "tensorboard")
    assert found["train/loss"] == [(1, pytest.approx(4.9)), (2, pytest.approx(4.8)), (3, pytest.approx(4.7))]
    log.close()
    found = tb_scalars(run / "tensorboard")
    assert set(found) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                          "val/loss", "val/ppl", "val/bpb", "val/tokens"}
    assert found["train/tokens_per_s"] == [(1, 1000.0), (2, 2000.0), (3, 3000.0)]
    assert found["val/bpb"] == [(2, 3.25)]
    assert [s for s, _ in found["train/lr"]] == [1, 2, 3]
    assert found["train/lr"][2][1] == pytest.approx(0.003)
    log.close()  # a second close does nothing


def test_tensorboard_on_resume_replaces_the_steps_redone(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    with MetricsLog(run / "metrics.jsonl", trackers="tensorboard") as log:
        write_run(log, steps=(1, 2, 3, 4), eval_at=(4,))
    with MetricsLog(run / "metrics.jsonl", trackers="tensorboard") as log:
        log.write("resume", step=2, kernels="torch", device="cpu", world_size=1)
        log.write("train", step=3, loss=1.25, lr=0.001, grad_norm=1.0, tokens_per_s=10.0)
    found = tb_scalars(run / "tensorboard")
    assert found["train/loss"] == [(1, pytest.approx(4.9)), (2, pytest.approx(4.8)), (3, 1.25)]
    assert "val/loss" not in found or found["val/loss"] == []
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per invocation


def test_tensorboard_started_on_a_resume_replays_the_history(assets, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(assets.run / "metrics.jsonl", run / "metrics.jsonl")
    losses = support.train_losses(run)
    with MetricsLog(run / "metrics.jsonl", trackers="tensorboard"):
        pass
    found = tb_scalars(run / "tensorboard")
    assert [s for s, _ in found["train/loss"]] == sorted(losses)
    assert [v for _, v in found["train/loss"]] == pytest.approx([losses[s] for s in sorted(losses)])
    evals = support.records(run, "eval")
    assert [v for _, v in found["val/bpb"]] == pytest.approx([r["val_bpb"] for r in evals])


# ---------------------------------------------------------------------------------------------
# W&B, through a fake module


class FakeWandb(types.ModuleType):
    """Records ``init`` / ``log`` / ``config.update`` / ``finish`` calls."""

    def __init__(self):
        super().__init__("wandb")
        self.calls: list[tuple] = []
        fake = self

        class Config(dict):
            def update(self, values, allow_val_change=False):
                fake.calls.append(("config.update", dict(values)))

        class Run:
            def __init__(self):
                self.config = Config()

            def log(self, values, step=None):
                fake.calls.append(("log", dict(values), step))

            def finish(self, exit_code=None):
                fake.calls.append(("finish", exit_code))

        self._run = Run

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self._run()


@pytest.fixture
def fake_wandb(monkeypatch, tmp_path):
    module = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` key either
    return module


def test_wandb_runs_offline_without_a_key_and_logs_every_record_by_step(fake_wandb, tmp_path):
    run = tmp_path / "my-run"
    with MetricsLog(run / "metrics.jsonl", trackers="wandb") as log:
        write_run(log, steps=(1, 2), eval_at=(2,))
    init = fake_wandb.calls[0]
    assert init[0] == "init"
    kwargs = init[1]
    assert kwargs["mode"] == "offline" and kwargs["project"] == "gpt1" and kwargs["name"] == "my-run"
    assert kwargs["dir"] == str(run) and kwargs["resume"] is None and kwargs["group"] == "my-run" and kwargs["id"]
    assert (run / "wandb" / "gpt1-run-id").read_text().strip() == kwargs["id"]
    assert fake_wandb.calls[1] == ("config.update", {"shards": "s", "batch_size": 4, "lr": 0.003, "model": {"n_ctx": 32},
                                                     "parameters": 1000, "kernels": "torch", "device": "cpu",
                                                     "world_size": 1})
    logs = [c for c in fake_wandb.calls if c[0] == "log"]
    assert logs == [
        ("log", {"train/loss": 4.9, "train/lr": 0.001, "train/grad_norm": 1.5, "train/tokens_per_s": 1000.0}, 1),
        ("log", {"train/loss": 4.8, "train/lr": 0.002, "train/grad_norm": 1.5, "train/tokens_per_s": 2000.0}, 2),
        ("log", {"val/loss": 4.5, "val/ppl": 90.0, "val/bpb": 3.25, "val/tokens": 512.0}, 2),
    ]
    assert fake_wandb.calls[-1] == ("finish", 0)


def test_wandb_online_resumes_the_same_run_and_reports_a_failure(fake_wandb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    run = tmp_path / "run"
    with MetricsLog(run / "metrics.jsonl", trackers="wandb", run_config={"lr": 0.5}) as log:
        write_run(log, steps=(1,), eval_at=())
    first = fake_wandb.calls[0][1]
    assert first["config"] == {"lr": 0.5} and first["mode"] == "online"
    fake_wandb.calls.clear()
    with pytest.raises(KeyboardInterrupt):
        with MetricsLog(run / "metrics.jsonl", trackers="wandb") as log:
            log.write("resume", step=1, kernels="torch", device="cpu", world_size=1)
            raise KeyboardInterrupt
    init = fake_wandb.calls[0][1]
    assert init["mode"] == "online" and init["id"] == first["id"] and init["resume"] == "allow"
    assert not [c for c in fake_wandb.calls if c[0] == "log"]  # nothing replayed: the W&B run has it already
    assert fake_wandb.calls[-1] == ("finish", 1)


def test_wandb_offline_resume_starts_a_run_with_the_whole_history(fake_wandb, tmp_path, monkeypatch):
    """W&B cannot resume offline: the new W&B run is given the records still current, then goes on."""
    run = tmp_path / "run"
    with MetricsLog(run / "metrics.jsonl", trackers="wandb") as log:
        write_run(log, steps=(1, 2, 3), eval_at=())
    first = fake_wandb.calls[0][1]
    fake_wandb.calls.clear()
    monkeypatch.setenv("WANDB_MODE", "offline")
    with MetricsLog(run / "metrics.jsonl", trackers="wandb") as log:
        log.write("resume", step=2, kernels="torch", device="cpu", world_size=1)
        log.write("train", step=3, loss=1.0, lr=0.003)
    init = fake_wandb.calls[0][1]
    assert init["mode"] == "offline" and init["id"] != first["id"] and init["resume"] is None
    assert init["group"] == first["group"] == "run"
    assert init["config"]["batch_size"] == 4  # from the run's config record
    steps = [(c[2], c[1]["train/loss"]) for c in fake_wandb.calls if c[0] == "log"]
    assert steps == [(1, pytest.approx(4.9)), (2, pytest.approx(4.8)), (3, 1.0)]  # step 3 as redone
    assert (run / "wandb" / "gpt1-run-id").read_text().strip() == init["id"]


def test_wandb_started_on_a_run_gets_its_history_even_with_nothing_logged(fake_wandb, tmp_path):
    run = tmp_path / "run"
    with MetricsLog(run / "metrics.jsonl") as log:
        write_run(log, steps=(1, 2), eval_at=(2,))
    with MetricsLog(run / "metrics.jsonl", trackers="wandb"):
        pass
    assert [(c[0], c[2]) for c in fake_wandb.calls if c[0] == "log"] == [("log", 1), ("log", 2), ("log", 2)]
    assert fake_wandb.calls[-1] == ("finish", 0)


def test_wandb_mode_online_only_with_a_key():
    assert wandb_mode({"NETRC": "/nonexistent"}) == "offline"
    assert wandb_mode({"WANDB_API_KEY": "k" * 40}) == "online"
    assert wandb_mode({"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "offline"}) == "offline"


def test_wandb_init_failure_is_one_line(fake_wandb, tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)\nmore detail")

    monkeypatch.setattr(fake_wandb, "init", refuse)
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(Gpt1Error) as info:
        MetricsLog(tmp_path / "run" / "metrics.jsonl", trackers="csv,wandb")
    message = str(info.value)
    assert "\n" not in message and "api_key not configured" in message and "WANDB_MODE=offline" in message


# ---------------------------------------------------------------------------------------------
# Missing packages, other ranks


@pytest.mark.parametrize("tracker, package", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_missing_package_fails_before_anything_is_written(tracker, package, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    run = tmp_path / "run"
    with pytest.raises(Gpt1Error) as info:
        MetricsLog(run / "metrics.jsonl", trackers=f"csv,{tracker}")
    assert str(info.value) == f"--log {tracker} needs the {package} package: pip install {package}"
    assert not run.exists()


def test_ranks_but_0_start_no_tracker(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.chdir(tmp_path)
    log = MetricsLog(None, trackers="tensorboard,wandb,csv")
    log.write("train", step=1, loss=1.0)
    log.close()
    assert log.trackers == [] and list(tmp_path.iterdir()) == []


def test_the_positional_signature_still_works_without_trackers(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write("train", step=1, loss=2.0)
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
