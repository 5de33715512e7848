"""`gpt1 bench`: the quick CPU suite end to end, the results file, the Markdown report, failures.

One subprocess runs ``gpt1 bench all --quick --device cpu --plot`` with the Triton interpreter
off (it would dominate the run); a separate in-process test times one interpreted kernel to
check that interpreter times are never presented as speeds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import support
from gpt1cli.errors import Gpt1Error

SECTIONS = ("kernels", "train", "data", "generate")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("bench")
    out = out_dir / "quick.json"
    result = support.run_subprocess(["bench", "all", "--quick", "--device", "cpu", "--out", out, "--plot"], cwd=out_dir,
                                    env=support.cli_env(TRITON_INTERPRET="0"), timeout=180)
    support.assert_ok(result)
    return out, json.loads(out.read_text(encoding="utf-8")), result.out


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6)


def _timed(record: dict) -> bool:
    return "median_ms" in record and not record.get("interpreted")


def _check_samples(record: dict) -> None:
    timing = record["timing"]
    assert timing["method"] and timing["n"] >= 1
    samples = timing.get("samples_ms") or list(timing["quantiles_ms"].values())
    assert samples and all(s > 0 for s in samples)
    assert record["median_ms"] > 0


def test_results_file_has_environment_and_options(quick_run):
    results = quick_run[1]
    assert results["schema"] == "gpt1-bench" and results["complete"] is True
    env = results["env"]
    for key in ("device_name", "device_slug", "driver_version", "cuda_version", "torch", "triton", "python",
                "git_commit", "date", "triton_mode", "cpu_count"):
        assert key in env, key
    assert env["device_type"] == "cpu" and env["device_name"]
    assert env["torch"] == torch.__version__ and env["python"].count(".") == 2
    assert env["triton_mode"] == "unavailable"  # TRITON_INTERPRET=0 on a CPU
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    assert "T" in env["date"]
    command = results["command"]
    assert command["quick"] is True and command["device"] == "cpu" and command["plot"] is True
    assert command["sections"] == list(SECTIONS) and command["resolved_dtype"] == "fp32"
    assert set(results["sections"]) == set(SECTIONS)
    for name in SECTIONS:
        assert results["sections"][name]["cases"], name
        assert results["sections"][name]["seconds"] > 0


def test_kernel_cases_have_times_rates_and_speedups(quick_run):
    results = quick_run[1]
    cases = results["sections"]["kernels"]["cases"]
    assert {c["op"] for c in cases} == {"attention", "attention-window", "layernorm", "cross-entropy"}
    assert {(c["op"], c["mode"]) for c in cases if c["op"] == "attention"} == {("attention", "fwd"), ("attention", "fwd+bwd")}
    for case in cases:
        eager = case["impls"]["eager"]
        _check_samples(eager)
        assert eager["speedup"] == 1.0
        for name, record in case["impls"].items():
            if not _timed(record):
                assert record.get("skipped") or record.get("error"), (name, record)
                continue
            _check_samples(record)
            assert record["peak_mem_bytes"] is None  # CPU
            assert _close(record["speedup"], eager["median_ms"] / record["median_ms"])
            seconds = record["median_ms"] / 1e3
            if case["op"] == "layernorm":
                assert _close(record["gbps"], case["bytes"] / seconds / 1e9)
            else:
                flops = record.get("flops", case.get("flops"))
                assert flops > 0 and _close(record["tflops"], flops / seconds / 1e12)
        # No interpreter here: our kernels are recorded as skipped, with the reason.
        assert "TRITON_INTERPRET" in case["impls"]["ours"]["skipped"]
    attention = next(c for c in cases if c["op"] == "attention" and c["mode"] == "fwd")
    b, h, t, d = (attention["shape"][k] for k in "BHTD")
    assert attention["flops"] == 4 * b * h * t * t * d / 2
    assert _timed(attention["impls"]["sdpa"])


def test_train_generate_and_data_sections(quick_run):
    results = quick_run[1]
    train = results["sections"]["train"]["cases"][0]
    eager = train["impls"]["eager"]
    _check_samples(eager)
    assert _close(eager["tokens_per_s"], train["tokens_per_step"] / (eager["median_ms"] / 1e3))
    assert eager["mfu"] is None and train["peak_flops"] is None  # no bf16 peak for a CPU
    assert train["flops_per_token"] > 6 * train["parameters"]
    assert set(train["impls"]) == {"eager", "compile", "ours", "ours+compile"}

    for case in results["sections"]["generate"]["cases"]:
        slow, fast = case["impls"]["no-cache"], case["impls"]["kv-cache"]
        _check_samples(slow)
        _check_samples(fast)
        assert _close(fast["speedup"], slow["median_ms"] / fast["median_ms"])
        assert _close(fast["tokens_per_s"], case["new_tokens"] / (fast["median_ms"] / 1e3))

    encode, reader, memory = results["sections"]["data"]["cases"]
    assert encode["bench"] == "tokenizer-encode" and reader["bench"] == "shard-reader"
    tokenize = memory["impls"]["gpt1-tokenize"]
    assert memory["bench"] == "tokenize-memory" and "error" not in tokenize, tokenize
    assert tokenize["corpus_bytes"] >= 5e6 and 10 < tokenize["peak_rss_mb"] < 4000
    assert _close(tokenize["mb_per_s"], tokenize["corpus_bytes"] / 1e6 / tokenize["seconds"])
    for record in encode["impls"].values():
        _check_samples(record)
        assert _close(record["mb_per_s"], encode["text_bytes"] / 1e6 / (record["median_ms"] / 1e3))
    windows = reader["impls"]["mmap-windows"]
    _check_samples(windows)
    assert reader["window"] == 513 and reader["batch_size"] == 32 and windows["tokens_per_s"] > 0


def test_cli_prints_tables_and_writes_charts(quick_run):
    out, _, stdout = quick_run
    for title in ("attention fwd", "layernorm fwd+bwd", "cross-entropy", "training step", "data pipeline", "generation"):
        assert title in stdout, title
    charts = sorted(p.name for p in out.parent.glob("quick-*.png"))
    assert "quick-attention-fwd.png" in charts and "quick-train.png" in charts and "quick-generate.png" in charts
    assert all((out.parent / name).stat().st_size > 1000 for name in charts)


def test_report_renders_markdown_from_the_file(quick_run, capsys):
    from gpt1_benchmarks import report

    out, results, _ = quick_run
    text = report.render_markdown(results)
    assert text.startswith(results["env"]["device_name"])
    assert "| shape | impl | median ms | TFLOP/s | peak MiB | vs eager | note |" in text
    assert "| shape | impl | median ms | GB/s |" in text
    assert "**training step (fwd + bwd + AdamW)**" in text and "**data pipeline**" in text
    eager = results["sections"]["kernels"]["cases"][0]["impls"]["eager"]
    assert f"| {eager['median_ms']:.4g} |" in text  # numbers come from the file
    # The directory form picks the newest GPU file; this CPU file counts only with --any-device.
    with pytest.raises(Gpt1Error, match="no cuda results"):
        report.latest_results(out.parent)
    assert report.latest_results(out.parent, device_type=None) == out
    assert report.main([str(out), "--section", "generate"]) == 0
    printed = capsys.readouterr().out
    assert "kv-cache" in printed and "**attention" not in printed


def test_interpreted_kernel_is_never_presented_as_speed():
    from gpt1_kernels import triton_available, triton_interpreting

    if not (triton_available() and triton_interpreting()):
        pytest.skip("needs Triton under TRITON_INTERPRET=1")
    from gpt1_benchmarks import harness, kernels, report

    settings = harness.Settings(device=torch.device("cpu"), dtype=torch.float32, quick=True, triton_mode="interpreter")
    shape = dict(rows=4, cols=32)
    case = {"op": "layernorm", "mode": "fwd", "dtype": "fp32", "shape": shape, "baseline": "eager",
            "bytes": kernels.layernorm_bytes(4, 32, 4, "fwd"), "impls": {}}
    for impl in kernels.layernorm_impls(shape, settings, "fwd"):
        if impl.name in ("eager", "ours"):
            case["impls"][impl.name] = kernels.run_impl(impl, settings)
    kernels.derive(case)
    ours = case["impls"]["ours"]
    assert ours["interpreted"] is True and ours["median_ms"] > 0
    assert ours["speedup"] is None and ours["gbps"] is None
    row = next(r for r in report.kernel_tables({"cases": [case]})[0].rows if r[1] == "ours")
    assert row[3] == "interpreter" and row[5] == "interpreter"


@pytest.mark.parametrize("argv, message", [
    (["bench", "everything"], "unknown benchmark 'everything'"),
    (["bench", "train", "--dtype", "fp8"], "--dtype must be one of"),
    (["bench", "train", "--device", "tpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["bench", "data", "--max-minutes", "0"], "--max-minutes must be positive"),
    (["bench", "data", "--out", "results.txt"], "must end in .json"),
])
def test_bad_options_give_one_error_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = support.run_main(argv, capsys)
    support.assert_one_error_line(result, message)
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_time_budget_and_failures_are_recorded_not_raised(tmp_path):
    from gpt1_benchmarks import harness
    from gpt1_benchmarks.suite import run_benchmarks

    results, path = run_benchmarks("generate", device="cpu", quick=True, out=tmp_path / "r.json", max_minutes=1e-9)
    assert path.is_file() and json.loads(path.read_text())["complete"] is True
    for case in results["sections"]["generate"]["cases"]:
        assert all("time budget" in r["skipped"] for r in case["impls"].values())

    settings = harness.Settings(device=torch.device("cpu"), dtype=torch.float32, quick=True, triton_mode="unavailable")

    def broken():
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    assert harness.guarded(settings, broken) == {"error": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"}


def test_many_samples_are_kept_as_quantiles():
    from gpt1_benchmarks.harness import MAX_RAW_SAMPLES, summarize

    few = summarize([3.0, 1.0, 2.0], "perf_counter")
    assert few["median_ms"] == 2.0 and few["timing"]["samples_ms"] == [3.0, 1.0, 2.0]
    many = summarize([float(i) for i in range(1, 2 * MAX_RAW_SAMPLES + 2)], "do_bench")
    quantiles = many["timing"]["quantiles_ms"]
    assert many["timing"]["n"] == 2 * MAX_RAW_SAMPLES + 1 and "samples_ms" not in many["timing"]
    assert quantiles["p0"] == 1.0 and quantiles["p50"] == many["median_ms"] and quantiles["p100"] == 2 * MAX_RAW_SAMPLES + 1


def test_report_shows_the_tokenize_to_raw_encode_ratio():
    from gpt1_benchmarks.report import data_tables

    ratio = {"text_bytes": 4e7, "threads": 2, "raw_encode_mb_per_s": 9.0, "tokenize_mb_per_s": 9.22, "ratio": 1.0244}
    rows = data_tables({"cases": [{"bench": "tokenizer-encode", "impls": {}, "tokenize_vs_raw_encode": ratio}]})[0].rows
    assert rows == [["gpt1 tokenize vs raw encode, 40 MB", "2 threads", "-", "9.22 MB/s", "1.02x", "raw encode 9.00 MB/s"]]
