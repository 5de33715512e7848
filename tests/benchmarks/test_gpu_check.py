"""`make gpu-check`: the whole control flow as a CPU dry run, budgets, cut-off stages, failures.

Dry runs in subprocesses (about a minute together on two idle cores):

* ``full``: ``make gpu-check GPU_CHECK_DRY=1`` into a temporary directory, with sacrebleu and
  rouge-score made unimportable as on the lent GPU machine: every stage runs and passes.
* ``stopped``: one kernel's output is perturbed and the correctness process hangs after its
  first check; once the results file shows that check, the run is sent SIGTERM: the failure
  gives exit status 1 and the check is kept.
* ``cut``: the correctness process hangs from the start and is stopped at its time cap; then
  the budget is spent: its checks are recorded as not run and the later stages as skipped for
  ``budget``.
* ``starved``: a budget of well under a second: every stage is skipped for ``budget``, and the
  files are still written.

No assertion depends on how fast the machine is: hangs are ended by the check's own limits
or by a signal sent once the files show the expected progress.

The judging of the performance targets is tested in-process on a synthetic GPU results file.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import support

STAGES = ("correctness", "model", "pytest", "kernels", "train", "generate")
KERNELS = ("attention", "attention+dropout", "attention+window", "add+layernorm", "linear+cross-entropy",
           "cross-entropy")
SCRIPT = support.REPO / "benchmarks" / "gpu_check.py"


def _env(**extra: str) -> dict:
    env = support.cli_env(**extra)
    for name in list(env):
        if name.startswith("GPU_CHECK_") or name in ("GPT1_KERNELS", "GPT1_ATTENTION_AUTOTUNE"):
            env.pop(name)
    env.update(extra)
    return env


def _outputs(out: Path) -> tuple[Path, dict]:
    files = [p for p in out.glob("*.json")]
    assert len(files) == 1, sorted(p.name for p in out.iterdir())
    return files[0], json.loads(files[0].read_text(encoding="utf-8"))


def _run(argv: list[str], env: dict, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=support.REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-full")
    env = _env(GPU_CHECK_BLOCK_IMPORTS="sacrebleu,rouge_score")
    if shutil.which("make"):
        argv = ["make", "--no-print-directory", "gpu-check", "GPU_CHECK_DRY=1", f"GPU_CHECK_OUT={out}",
                f"GPU_PYTHON={sys.executable}"]
    else:
        argv = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)]
    proc = _run(argv, env)
    path, results = _outputs(out)
    return proc, out, path, results


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-stopped")
    env = _env(GPU_CHECK_INJECT_FAILURE="add+layernorm", GPU_CHECK_TEST_HANG_AFTER="1")
    argv = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--stages", "correctness,generate",
            "--kernels", "add+layernorm,cross-entropy"]
    with support.reaped(subprocess.Popen(argv, cwd=support.REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)) as proc:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(out.glob("*.json"))
            try:
                cases = json.loads(files[0].read_text(encoding="utf-8"))["gpu_check"]["correctness"]["cases"] if files else []
            except (OSError, ValueError, KeyError):
                cases = []
            if any(c["status"] == "fail" for c in cases):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    path, results = _outputs(out)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr), out, path, results


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check-cut")
    env = _env(GPU_CHECK_TEST_HANG_AFTER="0", GPU_CHECK_TEST_SPEND="correctness=100000",
               GPU_CHECK_STAGE_SECONDS="correctness=3")
    argv = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--stages", "correctness,model,generate",
            "--kernels", "add+layernorm,cross-entropy"]
    proc = _run(argv, env, timeout=90)
    path, results = _outputs(out)
    return proc, out, path, results


# ----------------------------------------------------------------------------- the full dry run


def test_full_dry_run_runs_every_stage_and_passes(full):
    proc, out, path, results = full
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    check = results["gpu_check"]
    assert check["dry_run"] is True and check["passed"] is True and check["failures"] == []
    assert list(check["stages"]) == ["env", *STAGES]
    for name in STAGES:
        stage = check["stages"][name]
        assert stage["status"] == "ok", (name, stage)
        assert 0 < stage["seconds"] <= stage["allotted_s"] + 10, (name, stage)
    assert results["complete"] is True
    assert check["elapsed_s"] < check["budget_s"]
    # The name follows the benchmark files' <device-slug>-<date> (a dry run says so).
    assert path.name.startswith(results["env"]["device_slug"] + "-") and path.name.endswith("-dry-run.json")


def test_full_dry_run_checks_every_kernel_against_the_references(full):
    check = full[3]["gpu_check"]
    cases = check["correctness"]["cases"]
    for kernel in KERNELS:
        for dtype in ("fp32", "fp16"):
            case = next(c for c in cases if c["kernel"] == kernel and c["dtype"] == dtype and c["config"] == "fixed")
            assert case["status"] == "pass", case
            assert case["checks"] and all(c["ok"] and c["worst_ratio"] <= 1 for c in case["checks"])
        bf16 = next(c for c in cases if c["kernel"] == kernel and c["dtype"] == "bf16")
        assert bf16["status"] == "skipped" and "interpreter" in bf16["reason"]
    attention = next(c for c in cases if c["kernel"] == "attention" and c["dtype"] == "fp32")
    assert [c["tensor"] for c in attention["checks"]] == ["out", "dq", "dk", "dv"]
    assert check["correctness"]["config"].startswith("fixed") and "GPT1_ATTENTION_AUTOTUNE=0" in check["correctness"]["config"]
    model = check["model_check"]
    assert model["status"] == "pass" and model["torch"]["path"].startswith("torch")
    assert model["triton"]["path"].startswith("triton") and model["comparison"]["params_compared"] > 10
    pytest_counts = check["pytest"]
    assert pytest_counts["total"] >= 1 and pytest_counts["failed"] == pytest_counts["errors"] == 0
    assert pytest_counts["skipped"] >= 1  # GPU tests, skipped on a CPU
    assert pytest_counts["source"] == "junit" and "gpu or not gpu" in pytest_counts["command"]


def test_full_dry_run_benchmarks_are_gpt1_bench_sections(full, capsys):
    _, out, path, results = full
    assert results["schema"] == "gpt1-bench" and results["version"] == 1
    assert set(results["sections"]) == {"kernels", "train", "generate"}
    kernels = results["sections"]["kernels"]
    assert kernels["copy_bandwidth"]["gbps"] > 0
    groups = {(c["op"], c["mode"], c["shape"].get("dropout")) for c in kernels["cases"]}
    assert ("attention", "fwd+bwd", 0.1) in groups and ("attention", "fwd+bwd", None) in groups
    assert {c["op"] for c in kernels["cases"]} == {"attention", "attention-window", "layernorm", "cross-entropy"}
    train = results["sections"]["train"]["cases"][0]
    assert list(train["impls"]) == ["eager", "compile", "ours", "ours+compile"]
    assert train["impls"]["eager"]["median_ms"] > 0 and "skipped" in train["impls"]["ours"]
    assert results["sections"]["generate"]["cases"]
    # README tables are generated from the file as from any `gpt1 bench` file.
    from gpt1_benchmarks.report import main as report_main

    assert report_main([str(path)]) == 0
    markdown = capsys.readouterr().out
    assert "**attention fwd+bwd, dropout 0.1 (fp32)**" in markdown
    assert "**gpu-check: performance targets**" in markdown and "gpu-check: kernels against" in markdown
    assert report_main([str(out)]) == 2  # a directory holding only a CPU file has no GPU results


def test_full_dry_run_writes_log_summary_and_charts(full):
    proc, out, path, results = full
    stem = path.stem
    log = (out / f"{stem}-gpu-check.log").read_text(encoding="utf-8")
    summary = (out / f"{stem}-gpu-check-summary.txt").read_text(encoding="utf-8")
    for text in ("python ", "torch ", "triton ", "device "):
        assert text in log
    assert "== correctness: " in log and "== generate ok" in log
    assert summary.strip() in log and summary.strip() in proc.stdout
    assert summary.splitlines() == results["gpu_check"]["summary"]
    assert len(summary.splitlines()) <= 40  # one screen
    for kernel in KERNELS:
        assert any(line.split() and line.split()[0] == kernel for line in summary.splitlines()), kernel
    for stage in STAGES:
        assert f"{stage} ok" in summary
    assert "RESULT: PASS" in summary and "targets" in summary
    assert (out / f"{stem}-gpu-check-pytest.log").exists()
    charts = results["gpu_check"]["files"]["charts"]
    assert charts and all((out / name).stat().st_size > 0 for name in charts)
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


# ----------------------------------------------------------------------------- failures and the budget


def test_failing_check_gives_nonzero_exit_and_a_stopped_run_keeps_it(stopped):
    proc, out, path, results = stopped
    assert proc.returncode == 1, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    check = results["gpu_check"]
    assert check["passed"] is False
    assert any(f.startswith("add+layernorm fp32") for f in check["failures"]), check["failures"]
    failed = [c for c in check["correctness"]["cases"] if c["status"] == "fail"]
    assert [(c["kernel"], c["dtype"]) for c in failed] == [("add+layernorm", "fp32")]
    assert failed[0]["injected_failure"] is True and failed[0]["failed_tensors"] == ["out"]
    assert check["stages"]["correctness"]["status"] == "interrupted"
    assert check["stages"]["generate"]["status"] == "pending"
    assert "RESULT: FAIL" in proc.stdout and "stopped by a signal" in proc.stdout
    summary = (out / f"{path.stem}-gpu-check-summary.txt").read_text(encoding="utf-8")
    assert "add+layernorm" in summary and "FAIL" in summary


def test_stage_at_its_time_limit_is_stopped_and_later_stages_skip_for_budget(cut):
    proc, out, path, results = cut
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    check = results["gpu_check"]
    correctness = check["stages"]["correctness"]
    assert correctness["status"] == "timeout" and correctness["allotted_s"] == 3
    assert correctness["seconds"] < 3 + 10
    cases = check["correctness"]["cases"]
    planned = {(k, d) for k in ("add+layernorm", "cross-entropy") for d in ("fp32", "fp16", "bf16")}
    assert {(c["kernel"], c["dtype"]) for c in cases} == planned
    assert all(c["status"] == "not run" and c["reason"] == "timeout" for c in cases if c["dtype"] != "bf16")
    assert "stopped: its share of the budget" in (out / f"{path.stem}-gpu-check.log").read_text(encoding="utf-8")
    for name in ("model", "generate"):
        assert check["stages"][name]["status"] == "skipped" and check["stages"][name]["reason"] == "budget"
    for name in ("pytest", "kernels", "train"):
        assert check["stages"][name] == {"status": "skipped", "reason": "not selected"}
    assert results["complete"] is False and results["sections"] == {}
    assert check["passed"] is None and "RESULT: no correctness check ran" in proc.stdout


def test_starved_budget_skips_every_stage_but_writes_files(tmp_path):
    proc = _run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], _env(GPU_CHECK_MINUTES="0.005"),
                timeout=60)
    assert proc.returncode == 0, proc.stderr
    path, results = _outputs(tmp_path)
    stages = results["gpu_check"]["stages"]
    assert stages["env"]["status"] == "ok" and results["env"]["torch"]
    assert all(stages[name]["status"] == "skipped" and stages[name]["reason"] == "budget" for name in STAGES)
    assert results["gpu_check"]["passed"] is None and results["complete"] is False
    summary = (tmp_path / f"{path.stem}-gpu-check-summary.txt").read_text(encoding="utf-8")
    assert "correctness skipped: budget" in summary and "RESULT: no correctness check ran" in summary


def test_no_gpu_without_dry_run_is_a_usage_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = _run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], _env(), timeout=60)
    assert proc.returncode == 2 and "GPU_CHECK_DRY=1" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--stages", "correctness,nope"], "unknown stage"),
    (["--kernels", "softmax"], "unknown kernel"),
    (["--minutes", "0"], "must be positive"),
    (["--stage-seconds", "pytest"], "stage=seconds"),
])
def test_bad_options_are_usage_errors(argv, message, capsys):
    from gpt1_benchmarks.gpu_check import parse_args

    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- targets, in-process


def _gpu_results() -> dict:
    """A synthetic GPU results file: every target measured, some met and some not."""

    def timed(ms, **extra):
        return {"median_ms": ms, "timing": {"method": "triton.testing.do_bench", "n": 1}, **extra}

    cases = []
    for dropout in (0.0, 0.1):
        for t in (512, 1024, 2048, 4096):
            shape = {"B": max(8, min(32, 16384 // t)), "H": 12, "T": t, "D": 64, "window": None}
            if dropout:
                shape["dropout"] = dropout
            ours = 0.9 if not dropout or t < 4096 else 1.2  # slower than SDPA only with dropout at 4096
            cases.append({"op": "attention", "mode": "fwd+bwd", "dtype": "bf16", "shape": shape, "baseline": "eager",
                          "impls": {"eager": timed(3.0), "sdpa": timed(1.0, backend="flash"), "ours": timed(ours)}})
    for mode, gbps in (("fwd", 3000.0), ("fwd+bwd", 2500.0)):
        cases.append({"op": "layernorm", "mode": mode, "dtype": "bf16", "shape": {"rows": 16384, "cols": 768},
                      "baseline": "eager", "impls": {"eager": timed(1.0, gbps=900.0), "ours": timed(0.3, gbps=gbps)}})
    cases.append({"op": "cross-entropy", "mode": "fwd+bwd", "dtype": "bf16",
                  "shape": {"tokens": 8192, "vocab": 40478, "hidden": 768}, "baseline": "eager",
                  "impls": {"eager": timed(10.0, peak_mem_bytes=4000), "ours": timed(10.5, peak_mem_bytes=900)}})
    train = {"preset": "gpt1", "vocab_size": 40478, "batch_size": 16, "n_ctx": 512, "tokens_per_step": 8192,
             "baseline": "eager", "impls": {
                 "eager": timed(100.0, tokens_per_s=81920.0, mfu=0.3),
                 "compile": timed(80.0, tokens_per_s=102400.0, mfu=0.37),
                 "ours": timed(70.0, tokens_per_s=117029.0, mfu=0.42),
                 "ours+compile": timed(60.0, tokens_per_s=136533.0, mfu=0.5)}}
    return {
        "schema": "gpt1-bench", "version": 1, "complete": True,
        "env": {"device_type": "cuda", "device_name": "NVIDIA H200", "torch": "2.11", "triton": "3.6",
                "triton_mode": "compiled", "python": "3.12.3", "cuda_version": "13.0", "driver_version": "580",
                "git_commit": None, "date": "2026-12-01T00:00:00+00:00"},
        "command": {"resolved_dtype": "bf16", "quick": False},
        "sections": {"kernels": {"cases": cases, "copy_bandwidth": {"gbps": 3500.0}},
                     "train": {"cases": [train]}},
    }


def test_targets_are_judged_at_gpt1_shapes():
    from gpt1_benchmarks.gpu_check import evaluate_targets

    targets = {t["id"]: t for t in evaluate_targets(_gpu_results())}
    assert targets["attention"]["met"] is True
    assert targets["attention"]["value"] == pytest.approx({str(t): 1 / 0.9 for t in (512, 1024, 2048, 4096)})
    assert targets["attention-dropout"]["met"] is False and "T=4096 0.83x" in targets["attention-dropout"]["detail"]
    assert targets["layernorm-fwd"]["met"] is True and targets["layernorm-fwd"]["value"] == pytest.approx(3000 / 3500)
    assert targets["layernorm-fwd+bwd"]["met"] is False
    assert targets["cross-entropy"]["met"] is True
    assert targets["cross-entropy"]["value"] == pytest.approx({"memory": 0.225, "time": 1.05})
    assert targets["train"]["met"] is True and targets["train"]["value"]["path"] == "ours+compile"
    assert targets["train"]["value"]["vs_eager"] == pytest.approx(100 / 60)
    assert targets["mfu"]["met"] is True and targets["mfu"]["value"] == pytest.approx(0.5)


def test_missing_measurements_are_not_judged():
    from gpt1_benchmarks.gpu_check import evaluate_targets

    results = _gpu_results()
    cases = results["sections"]["kernels"]["cases"]
    long = next(c for c in cases if c["op"] == "attention" and c["shape"]["T"] == 4096 and "dropout" not in c["shape"])
    long["impls"]["ours"] = {"skipped": "time budget (--max-minutes) used up"}
    results["sections"]["kernels"]["copy_bandwidth"] = {"error": "OutOfMemoryError"}
    del results["sections"]["train"]
    targets = {t["id"]: t for t in evaluate_targets(results)}
    assert targets["attention"]["met"] is None and "T=4096: skipped: time budget" in targets["attention"]["detail"]
    assert targets["layernorm-fwd"]["met"] is None and targets["train"]["met"] is None
    assert targets["mfu"]["met"] is None
    # A measured miss stays a miss even when other lengths are missing.
    slow = copy.deepcopy(results)
    first = next(c for c in slow["sections"]["kernels"]["cases"] if c["op"] == "attention")
    first["impls"]["ours"]["median_ms"] = 2.0
    assert {t["id"]: t for t in evaluate_targets(slow)}["attention"]["met"] is False


def test_summary_and_report_of_a_gpu_results_file():
    from gpt1_benchmarks.checks import KERNELS as CHECKED
    from gpt1_benchmarks.gpu_check import STAGE_NAMES, correctness_failures, evaluate_targets, render_summary
    from gpt1_benchmarks.report import render_markdown

    assert CHECKED == KERNELS
    results = _gpu_results()
    cases = [{"kernel": k, "dtype": d, "config": "fixed", "status": "pass", "worst_ratio": 0.25}
             for k in KERNELS for d in ("bf16", "fp16", "fp32")]
    cases[4] = dict(cases[4], status="fail", worst_ratio=3.5, failed_tensors=["dk"])
    results["gpu_check"] = {
        "dry_run": False, "budget_s": 540.0, "elapsed_s": 530.0,
        "stages": {"env": {"status": "ok"}, **{s: {"status": "ok", "seconds": 10.0} for s in STAGE_NAMES}},
        "correctness": {"cases": cases}, "model_check": None,
        "pytest": {"passed": 100, "failed": 0, "errors": 0, "skipped": 2, "failures": [], "command": "pytest tests/kernels"},
    }
    results["gpu_check"]["targets"] = evaluate_targets(results)
    results["gpu_check"]["failures"] = correctness_failures(results["gpu_check"])
    assert results["gpu_check"]["failures"] == ["attention+dropout fp16 (fixed): dk out of tolerance"]
    lines = render_summary(results)
    text = "\n".join(lines)
    assert len(lines) <= 40 and max(len(line) for line in lines) <= 200
    assert "FAIL 3.5" in text and "RESULT: FAIL: 1 correctness check(s) failed" in text
    assert "[NOT MET] attention fwd+bwd vs SDPA flash (bf16, D=64, dropout 0.1)" in text
    assert "[MET    ] gpt1 train step MFU" in text
    markdown = render_markdown(results)
    assert "**gpu-check: performance targets**" in markdown and "| attention+dropout | fp16 | fixed |" in markdown
    assert "**attention fwd+bwd, dropout 0.1 (bf16)**" in markdown
    assert "gpu-check" not in render_markdown(results, ["kernels"])


def test_pytest_counts_from_a_cut_off_run(tmp_path):
    import re

    from gpt1_benchmarks.gpu_check import _pytest_counts

    lines = ["tests/kernels/test_a.py::test_x[1] PASSED    [  1%]",
             "tests/kernels/test_a.py::test_y FAILED    [  2%]",
             "tests/kernels/test_a.py::test_z SKIPPED (needs a GPU)    [  3%]",
             "tests/kernels/test_a.py::test_w PASSED    [  4%]",
             "tests/kernels/test_a.py::test_w ERROR    [  4%]"]
    status = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
    counts = _pytest_counts(tmp_path / "missing.xml", lines, status)
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (1, 1, 1, 1)
    assert counts["source"] == "output" and counts["failures"] == ["tests/kernels/test_a.py::test_y",
                                                                   "tests/kernels/test_a.py::test_w"]
