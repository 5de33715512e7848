"""`gpt1 plot`: runs' curves overlaid in one image, checked by its pixels; the one-line errors of
bad input. Synthetic logs are written in the records pre-training and fine-tuning write; one
real run (fixture ``assets``) is plotted too."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import typer

import support
from gpt1cli.cli import app as app_module
from gpt1cli.cli.plot_cmd import plot
from gpt1cli.errors import Gpt1Error
from gpt1cli.plot import load_run, plot_runs, run_names

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

# matplotlib's first colours (tab10): run 1, run 2, run 3
BLUE, ORANGE, GREEN = (31, 119, 180), (255, 127, 14), (44, 160, 44)


@pytest.fixture(autouse=True)
def plot_command(monkeypatch):
    """`gpt1 plot` through the real entry point; registered here until cli/app.py has it."""
    if "plot" not in typer.main.get_command(app_module.app).commands:
        local = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        local.command("plot")(plot)
        local.command("noop", hidden=True)(lambda: None)  # two commands: `plot` stays a subcommand
        monkeypatch.setattr(app_module, "app", local)


def write_log(run, records) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def pretrain_records(steps=60, lr=3e-3, speed=1.0, batch=4, n_ctx=32, eval_every=10) -> list[dict]:
    records = [{"kind": "config", "time": 0.0, "config": {"shards": "s", "batch_size": batch, "steps": steps, "lr": lr},
                "model": {"n_ctx": n_ctx}, "parameters": 1000, "kernels": "torch", "device": "cpu", "world_size": 1}]
    for step in range(1, steps + 1):
        loss = 2 + 4 * math.exp(-step * speed / 15) + 0.1 * math.sin(step)
        records.append({"kind": "train", "time": float(step), "step": step, "loss": loss,
                        "lr": lr * min(1.0, step / 5), "grad_norm": 1.0, "tokens_per_s": 9000.0 + 50 * (step % 7)})
        if step % eval_every == 0:
            val = 2.2 + 4 * math.exp(-step * speed / 15)
            records.append({"kind": "eval", "time": float(step), "step": step, "val_loss": val, "val_ppl": math.exp(val),
                            "val_bpb": val / math.log(2) / 4, "val_tokens": 512})
    return records


def finetune_records(steps=20) -> list[dict]:
    records = [{"kind": "config", "time": 0.0, "config": {"train": "t.jsonl", "val": "v.jsonl", "from_run": "r",
                                                          "metric": "accuracy", "batch_size": 8},
                "model": {"n_ctx": 32}, "labels": ["neg", "pos"], "train_examples": 80, "val_examples": 20}]
    for step in range(1, steps + 1):
        records.append({"kind": "train", "time": float(step), "step": step, "loss": 0.7 / step, "task_loss": 0.7 / step,
                        "lm_loss": None, "lr": 6.25e-5 * (1 - step / steps)})
        if step % 5 == 0:
            records.append({"kind": "eval", "time": float(step), "step": step, "epoch": step // 5 - 1,
                            "accuracy": 0.5 + step / 45, "macro_f1": 0.5, "mcc": 0.2, "examples": 20})
    return records


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def has_colour(image: np.ndarray, rgb, tolerance=12, at_least=200) -> bool:
    return int((np.abs(image - np.array(rgb)).max(axis=-1) <= tolerance).sum()) >= at_least


# ---------------------------------------------------------------------------------------------


def test_overlaid_runs_get_a_colour_each_and_names_that_tell_them_apart(tmp_path, capsys):
    write_log(tmp_path / "lr-high" / "base", pretrain_records(lr=3e-3, speed=1.5))
    write_log(tmp_path / "lr-low" / "base", pretrain_records(lr=1e-3, speed=0.7))
    write_log(tmp_path / "classify", finetune_records())
    out = tmp_path / "charts" / "curves.png"
    result = support.assert_ok(support.run_main(
        ["plot", tmp_path / "lr-high" / "base", tmp_path / "lr-low" / "base" / "metrics.jsonl", tmp_path / "classify",
         "--out", out], capsys))
    assert "lr-high/base, lr-low/base, classify" in result.out
    for panel in ("Loss", "Validation bits per byte", "Validation accuracy", "Learning rate", "Training throughput"):
        assert panel in result.out
    image = pixels(out)
    # five panels: two columns of 6.2 in, three rows of 3.6 in (+ title and legend) at 110 dpi
    assert abs(image.shape[1] - 2 * 6.2 * 110) <= 1
    assert abs(image.shape[0] - (3 * 3.6 + 0.6 + 0.28) * 110) <= 1
    assert image.std() > 20  # not blank
    assert has_colour(image, BLUE) and has_colour(image, ORANGE) and has_colour(image, GREEN)
    assert not list(out.parent.glob(".curves.png.*"))  # written atomically: no temporary left


def test_one_run_is_drawn_in_one_colour(tmp_path, capsys):
    write_log(tmp_path / "solo", pretrain_records())
    out = tmp_path / "solo.png"
    support.assert_ok(support.run_main(["plot", tmp_path / "solo", "-o", out], capsys))
    image = pixels(out)
    assert abs(image.shape[0] - (2 * 3.6 + 0.6 + 0.28) * 110) <= 1 and abs(image.shape[1] - 2 * 6.2 * 110) <= 1
    assert has_colour(image, BLUE) and not has_colour(image, ORANGE, at_least=20)


def test_a_real_run_plots_against_tokens_and_as_svg(assets, tmp_path, capsys):
    out = tmp_path / "real.svg"
    result = support.assert_ok(support.run_main(["plot", assets.run, "--x", "tokens", "--out", out,
                                                 "--title", "tiny preset"], capsys))
    assert "1 run(s) (run)" in result.out
    svg = out.read_text(encoding="utf-8")
    assert "<svg" in svg and "tiny preset" in svg and "tokens seen" in svg and "bits per byte" in svg
    curves = load_run(assets.run)
    assert curves.kind == "pretrain" and curves.tokens_per_step == support.RUN_BATCH * 32
    xs, ys = curves.series("train", "loss", "tokens")
    assert xs[-1] == support.RUN_STEPS * support.RUN_BATCH * 32
    assert ys == list(support.train_losses(assets.run).values())
    assert curves.series("val", "bpb")[0] == [8, 16, 24]


def test_a_resumed_log_plots_the_steps_redone(tmp_path):
    records = pretrain_records(steps=20)
    records.append({"kind": "resume", "time": 30.0, "step": 12, "kernels": "torch", "device": "cpu", "world_size": 1})
    records += [{"kind": "train", "time": 31.0 + s, "step": s, "loss": 1.0, "lr": 1e-3, "grad_norm": 1.0,
                 "tokens_per_s": 1.0} for s in range(13, 16)]
    write_log(tmp_path / "resumed", records)
    curves = load_run(tmp_path / "resumed")
    xs, ys = curves.series("train", "loss")
    assert xs == list(range(1, 16)) and ys[-3:] == [1.0, 1.0, 1.0]
    assert curves.series("val", "loss")[0] == [10]  # the eval of step 20 was undone


def test_a_torn_last_line_is_left_out(tmp_path):
    write_log(tmp_path / "live", pretrain_records(steps=10))
    with open(tmp_path / "live" / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"kind": "train", "time": 11.0, "st')
    assert load_run(tmp_path / "live").series("train", "loss")[0] == list(range(1, 11))


def test_run_names_add_parents_only_as_needed(tmp_path):
    paths = [tmp_path / "a" / "x" / "base" / "metrics.jsonl", tmp_path / "b" / "x" / "base" / "metrics.jsonl",
             tmp_path / "c" / "other" / "metrics.jsonl"]
    assert run_names(paths) == ["a/x/base", "b/x/base", "other"]
    assert run_names([paths[2], paths[2]]) == ["other #1", "other #2"]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, nothing written


def test_bad_input_is_one_line(tmp_path, capsys):
    write_log(tmp_path / "good", pretrain_records(steps=5))
    write_log(tmp_path / "tuned", finetune_records(steps=5))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "no-log").mkdir()
    damaged = pretrain_records(steps=5)
    write_log(tmp_path / "damaged", damaged)
    lines = (tmp_path / "damaged" / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"
    (tmp_path / "damaged" / "metrics.jsonl").write_text("".join(lines))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "metrics.jsonl").write_text('{"kind": "config", "ti', encoding="utf-8")
    out = tmp_path / "out.png"
    cases = [
        ([tmp_path / "missing"], ["no run at", "missing"]),
        ([tmp_path / "no-log"], ["has no metrics.jsonl", "no-log"]),
        ([tmp_path / "empty"], ["holds no training or validation records", "empty"]),
        ([tmp_path / "damaged"], ["line 3 is not a metrics record", "damaged"]),
        ([tmp_path / "torn"], ["holds only a torn line"]),
        ([tmp_path / "good", tmp_path / "tuned", "--x", "tokens"], ["--x tokens", "tuned", "use --x step"]),
        ([tmp_path / "good", "--x", "time"], ["--x must be step or tokens"]),
    ]
    for argv, expected in cases:
        support.assert_one_error_line(support.run_main(["plot", *argv, "--out", out], capsys), *expected)
    support.assert_one_error_line(support.run_main(["plot", tmp_path / "good", "--out", tmp_path / "out.jpg"], capsys),
                                  ".png, .svg or .pdf")
    support.assert_one_error_line(support.run_main(["plot", tmp_path / "good", "--out", tmp_path], capsys),
                                  "is a directory")
    assert not out.exists()


def test_without_matplotlib_the_error_names_the_extra(tmp_path, monkeypatch):
    write_log(tmp_path / "good", pretrain_records(steps=5))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(Gpt1Error) as info:
        plot_runs([tmp_path / "good"], tmp_path / "out.png")
    assert "gpt1[plot]" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out.png").exists()
