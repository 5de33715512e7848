"""`gpt1 bench`: benchmarks of the fused kernels, training, data and generation.

Parses options, calls :mod:`gpt1_benchmarks` and prints its tables; the measuring lives there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..progress import console as make_console
from .options import device_option


def _rich_table(spec) -> Table:
    table = Table(title=spec.title, title_justify="left")
    for index, column in enumerate(spec.columns):
        table.add_column(column, justify="right" if index in spec.numeric else "left",
                         overflow="fold", max_width=60 if column == "note" else None)
    for row in spec.rows:
        table.add_row(*row)
    return table


def bench(
    section: str = typer.Argument(..., help="What to benchmark: kernels, train, data, generate or all."),
    device: str = device_option(),
    dtype: str = typer.Option("auto", help="bf16, fp16 or fp32 for kernel inputs and training autocast; "
                                           "auto is bf16 on CUDA, fp32 on CPU."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Results JSON. Default: benchmarks/results/<device-slug>-<YYYY-MM-DD>.json."),
    plot: bool = typer.Option(False, "--plot", help="Also write PNG charts next to the JSON (needs matplotlib). Default: off."),
    quick: bool = typer.Option(False, "--quick", help="Tiny shapes and few repeats: a smoke test, not a measurement. Default: off."),
    max_minutes: float = typer.Option(7.0, help="Time budget in minutes: cases not started within it are recorded as skipped."),
    corpus_mb: float = typer.Option(2000.0, help="data: megabytes of generated text for the tokenize peak-memory case (5 with --quick)."),
) -> None:
    """Benchmark the Triton kernels against PyTorch, training steps, the data pipeline and generation."""
    from gpt1_benchmarks.report import section_tables
    from gpt1_benchmarks.suite import parse_sections, run_benchmarks

    parse_sections(section)  # a bad name fails before anything is measured
    if plot:
        from gpt1_benchmarks.plots import require_matplotlib

        require_matplotlib()
    console = make_console()
    err = make_console(stderr=True)

    def show(name: str, result: dict) -> None:
        for spec in section_tables(name, result):
            console.print(_rich_table(spec))
        console.print(f"[dim]{name}: {result.get('seconds', 0):.1f} s[/]")

    results, path = run_benchmarks(
        section, device=device, dtype=dtype, out=out, quick=quick, max_minutes=max_minutes, corpus_mb=corpus_mb,
        command={"plot": plot}, log=lambda message: err.print(f"[dim]{message}[/]"), on_section=show,
    )
    console.print(f"results: {path}")
    if plot:
        from gpt1_benchmarks.plots import write_plots

        for chart in write_plots(results, path):
            console.print(f"chart: {chart}")
    if results["env"]["triton_mode"] == "interpreter":
        console.print("[yellow]Triton ran under TRITON_INTERPRET=1: its times are interpreter times, not speeds.[/]")

