"""The host side of the kernel calls: its cheap helpers, and the benchmark that times it."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import gpt1_kernels.attention as attention_module  # noqa: E402
from gpt1_benchmarks import dispatch, report  # noqa: E402
from gpt1_benchmarks.harness import Settings  # noqa: E402
from gpt1_kernels.host import cdiv, next_power_of_2  # noqa: E402


def test_integer_helpers_match_triton():
    for n in range(0, 5000):
        assert next_power_of_2(n) == triton.next_power_of_2(n), n
    for a in range(0, 300):
        for b in (1, 3, 16, 64, 128):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)


def test_no_op_launches_swap_every_kernel_and_put_them_back():
    kernel = attention_module._attn_fwd
    with dispatch.no_op_launches():
        assert isinstance(attention_module._attn_fwd, dispatch._NoOpKernel)
        assert isinstance(attention_module._fwd_tuned, dispatch._NoOpKernel)
        q = torch.randn(1, 1, 8, 16)
        out = attention_module.flash_attention(q, q, q)  # nothing launched: the output is never written
        assert out.shape == q.shape
    assert attention_module._attn_fwd is kernel


def test_dispatch_records_every_entry_point_and_reports_them():
    settings = Settings(device=torch.device("cpu"), dtype=torch.float32, quick=True, triton_mode="unavailable")
    threads = torch.get_num_threads()
    records = dispatch.run_dispatch(settings)
    assert torch.get_num_threads() == threads
    assert [(r["op"], r["mode"]) for r in records] == [
        (entry.name, mode) for entry in dispatch.ENTRIES for mode in dispatch.MODES
    ]
    calls, samples = dispatch.call_counts(settings)
    for record in records:
        assert record["launches"] == "no-op" and record["device"] == "cpu"
        for impl in ("ours", "torch"):
            timed = record["impls"][impl]
            assert timed["timing"]["n"] == samples and timed["timing"]["calls"] == calls
            assert timed["median_us"] == pytest.approx(timed["median_ms"] * 1e3) and timed["median_us"] > 0
    table = report.dispatch_table(records)
    assert len(table.rows) == len(records)
    first = records[0]["impls"]
    ratio = first["ours"]["median_us"] / first["torch"]["median_us"]
    assert table.rows[0][:4] == ["flash_attention", "fwd", "no-op", "cpu"] and table.rows[0][6] == f"{ratio:.2f}x"
    markdown = report.markdown_table(table)
    assert markdown.splitlines()[0].startswith("**host overhead per call")
