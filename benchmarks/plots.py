"""PNG charts of a results file (matplotlib, the ``plot`` extra), written beside the JSON.

One chart per kernel group (TFLOP/s or GB/s, or time, against the swept size, one line per
implementation), one for training throughput and one for generation. Interpreted, failed
and skipped runs are left out: they are no speeds.

``python -m gpt1_benchmarks.plots FILE`` draws the charts of an existing results file, e.g.
one measured on a machine without matplotlib.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gpt1cli.errors import Gpt1Error
from gpt1cli.fileio import atomic_path


def require_matplotlib():
    """Import matplotlib with a headless backend, or say how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Gpt1Error("--plot needs matplotlib: pip install 'gpt1[plot]' (or pip install matplotlib)") from None
    return plt


def _timed(record: dict) -> bool:
    return "median_ms" in record and not record.get("interpreted")


_KERNEL_AXES = {
    # op: (x label, x from case, y key, y label)
    "attention": ("sequence length T", lambda c: c["shape"]["T"], "tflops", "TFLOP/s"),
    "attention-window": ("sequence length T", lambda c: c["shape"]["T"], "median_ms", "time (ms)"),
    "layernorm": ("row width (d_model)", lambda c: c["shape"]["cols"], "gbps", "GB/s"),
    "cross-entropy": ("tokens", lambda c: c["shape"]["tokens"], "median_ms", "time (ms)"),
}


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")


def _save(plt, fig, path: Path, written: list[Path]) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    written.append(path)


def _line_chart(plt, lines: dict[str, list[tuple[float, float]]]):
    """``(fig, ax)`` with one line per entry of ``lines`` (its points sorted by x), a grid and a legend."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig, ax


def _kernel_charts(plt, results: dict, stem: Path, written: list[Path]) -> None:
    from .report import kernel_group

    section = results["sections"].get("kernels", {})
    groups: dict[tuple, list[dict]] = {}
    for case in section.get("cases", []):
        groups.setdefault(kernel_group(case), []).append(case)
    device = results.get("env", {}).get("device_name", "")
    for (op, mode, dropout), cases in groups.items():
        xlabel, x_of, ykey, ylabel = _KERNEL_AXES.get(op, ("case", lambda c: 0, "median_ms", "time (ms)"))
        vocabs = {case["shape"].get("vocab") for case in cases}
        lines: dict[str, list[tuple[float, float]]] = {}
        for case in cases:
            for name, record in case["impls"].items():
                if _timed(record) and record.get(ykey) is not None:
                    label = f"{name}, vocab {case['shape']['vocab']}" if len(vocabs) > 1 else name
                    lines.setdefault(label, []).append((x_of(case), record[ykey]))
        if not lines:
            continue
        fig, ax = _line_chart(plt, lines)
        ax.set_xscale("log", base=2)
        xs = sorted({p[0] for points in lines.values() for p in points})
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        if ykey == "median_ms":
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        title = f"{op} {mode}" + (f", dropout {dropout:g}" if dropout else "") + f" ({cases[0].get('dtype')})"
        if op == "cross-entropy" and len(vocabs) == 1:
            title += f", vocab {vocabs.pop()}"
        ax.set_title(f"{title}\n{device}", fontsize=10)
        suffix = f"-dropout-{_slug(f'{dropout:g}')}" if dropout else ""
        _save(plt, fig, stem.with_name(f"{stem.name}-{_slug(op)}-{_slug(mode)}{suffix}.png"), written)


def _train_chart(plt, results: dict, stem: Path, written: list[Path]) -> None:
    cases = results["sections"].get("train", {}).get("cases", [])
    bars = [(f"{case['preset']}\n{name}", record["tokens_per_s"]) for case in cases
            for name, record in case["impls"].items() if _timed(record) and record.get("tokens_per_s")]
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(bars)), 4.2))
    ax.bar(range(len(bars)), [b[1] for b in bars])
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"training step throughput\n{results.get('env', {}).get('device_name', '')}", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    _save(plt, fig, stem.with_name(f"{stem.name}-train.png"), written)


def _generate_chart(plt, results: dict, stem: Path, written: list[Path]) -> None:
    cases = results["sections"].get("generate", {}).get("cases", [])
    lines: dict[str, list[tuple[int, float]]] = {}
    for case in cases:
        for name, record in case["impls"].items():
            if _timed(record):
                lines.setdefault(name, []).append((case["prompt_tokens"], record["tokens_per_s"]))
    if not lines:
        return
    fig, ax = _line_chart(plt, lines)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("generated tokens/s")
    ax.set_title(f"generation ({cases[0]['preset']} preset, {cases[0]['new_tokens']} new tokens)\n"
                 f"{results.get('env', {}).get('device_name', '')}", fontsize=10)
    _save(plt, fig, stem.with_name(f"{stem.name}-generate.png"), written)


def write_plots(results: dict, json_path: str | Path) -> list[Path]:
    """Write the charts as ``<json stem>-<chart>.png`` next to ``json_path``; returns their paths."""
    plt = require_matplotlib()
    json_path = Path(json_path)
    stem = json_path.with_suffix("")
    written: list[Path] = []
    _kernel_charts(plt, results, stem, written)
    _train_chart(plt, results, stem, written)
    _generate_chart(plt, results, stem, written)
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    from .report import load_results, run_command

    parser = argparse.ArgumentParser(prog="python -m gpt1_benchmarks.plots",
                                     description="Draw the PNG charts of a gpt1 bench results file beside it.")
    parser.add_argument("path", help="results JSON file")
    args = parser.parse_args(argv)

    def draw() -> None:
        for chart in write_plots(load_results(args.path), args.path):
            print(chart)

    return run_command(draw)


if __name__ == "__main__":
    sys.exit(main())
