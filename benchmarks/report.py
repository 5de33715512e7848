"""Tables from a results file: plain rows for the CLI's rich tables and Markdown for the README.

``python -m gpt1_benchmarks.report [FILE_OR_DIR]`` prints the Markdown of a results file, or of
the newest GPU results file in a directory (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from gpt1cli.errors import Gpt1Error
from gpt1cli.fileio import read_json

from .env import RESULTS_DIR

SCHEMA = "gpt1-bench"
SECTION_ORDER = ("kernels", "train", "data", "generate")
GPU_CHECK = "gpu-check"  # the ``gpu_check`` key written by ``make gpu-check``
INTERPRETER = "interpreter"
DASH = "-"


@dataclass
class Table:
    """A titled table of already formatted cells; ``numeric`` columns are right-aligned."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    numeric: set[int] = field(default_factory=set)


# ----------------------------------------------------------------------------- cell formats


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return DASH
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text:
        return f"{value:,.0f}"
    return text


def _big(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f}"


def _mib(value: int | None) -> str:
    return DASH if value is None else f"{value / 2**20:,.0f}"


def _status(record: dict) -> str | None:
    """The text shown instead of numbers for a failed or skipped implementation."""
    if "error" in record:
        return "error"
    if "skipped" in record:
        return "skipped"
    return None


def _note(record: dict, limit: int = 70) -> str:
    text = record.get("error") or record.get("skipped") or ""
    if not text and record.get("backend"):
        text = f"backend: {record['backend']}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ms(record: dict) -> str:
    return _status(record) or _num(record.get("median_ms"))


def _speed(record: dict, key: str, fmt=_num) -> str:
    """A derived speed, or 'interpreter' for interpreted runs (whose times are no speeds)."""
    if _status(record):
        return DASH
    if record.get("interpreted"):
        return INTERPRETER
    return fmt(record.get(key))


def _speedup(record: dict) -> str:
    if _status(record):
        return DASH
    if record.get("interpreted"):
        return INTERPRETER
    value = record.get("speedup")
    return DASH if value is None else f"{value:.2f}x"


# ----------------------------------------------------------------------------- sections


def _shape_text(case: dict) -> str:
    shape = case.get("shape", {})
    op = case["op"]
    if op.startswith("attention"):
        text = f"B={shape['B']} H={shape['H']} T={shape['T']} D={shape['D']}"
        text += f" w={shape['window']}" if shape.get("window") else ""
        return text + (f" p={shape['dropout']:g}" if shape.get("dropout") else "")
    if op == "layernorm":
        return f"{shape['rows']}x{shape['cols']}"
    if op == "cross-entropy":
        return f"N={shape['tokens']} V={shape['vocab']} C={shape['hidden']}"
    return json.dumps(shape)


def kernel_group(case: dict) -> tuple[str, str, float]:
    """Cases shown together: same op and mode, and the same attention dropout (0 when none)."""
    return case["op"], case["mode"], float(case.get("shape", {}).get("dropout") or 0.0)


def kernel_tables(section: dict) -> list[Table]:
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for case in section.get("cases", []):
        groups.setdefault(kernel_group(case), []).append(case)
    tables = []
    for (op, mode, dropout), cases in groups.items():
        rate_key, rate_name = ("gbps", "GB/s") if op == "layernorm" else ("tflops", "TFLOP/s")
        dtype = cases[0].get("dtype", "")
        title = f"{op} {mode}" + (f", dropout {dropout:g}" if dropout else "")
        table = Table(f"{title} ({dtype})",
                      ["shape", "impl", "median ms", rate_name, "peak MiB", "vs eager", "note"],
                      numeric={2, 3, 4, 5})
        for case in cases:
            for name, record in case["impls"].items():
                table.rows.append([_shape_text(case), name, _ms(record), _speed(record, rate_key),
                                   _mib(record.get("peak_mem_bytes")), _speedup(record), _note(record)])
        tables.append(table)
    if section.get("cases"):
        tables.append(kernel_summary(section))
    if section.get("dispatch"):
        tables.append(dispatch_table(section["dispatch"]))
    return tables


def kernel_summary(section: dict) -> Table:
    """One row per case: our kernel against eager and against the fastest built-in alternative."""
    table = Table("kernels summary: ours against eager and the fastest built-in",
                  ["op", "mode", "shape", "fastest built-in", "its ms", "ours ms", "ours vs eager", "ours vs built-in"],
                  numeric={4, 5, 6, 7})
    for case in section.get("cases", []):
        ours = case["impls"].get("ours")
        if ours is None:
            continue
        builtins = [(name, r) for name, r in case["impls"].items()
                    if not name.startswith("ours") and "median_ms" in r and not r.get("interpreted")]
        best_name, best = min(builtins, key=lambda item: item[1]["median_ms"]) if builtins else (DASH, {})
        if _status(ours) or ours.get("interpreted"):
            versus = _status(ours) or INTERPRETER
        else:
            versus = f"{best['median_ms'] / ours['median_ms']:.2f}x" if best else DASH
        table.rows.append([case["op"], case["mode"], _shape_text(case), best_name,
                           _num(best.get("median_ms")), _ms(ours), _speedup(ours), versus])
    return table


def _us(record: dict) -> str:
    return _status(record) or _num(record.get("median_us"), 3)


def dispatch_table(records: list[dict]) -> Table:
    """Host time per call of each entry point, ours against the PyTorch built-in."""
    table = Table("host overhead per call (us, tiny shapes): ours against the PyTorch built-in",
                  ["entry point", "mode", "launches", "device", "ours us", "torch us", "ours / torch", "note"],
                  numeric={4, 5, 6})
    for record in records:
        ours, builtin = record["impls"].get("ours", {}), record["impls"].get("torch", {})
        timed = "median_us" in ours and "median_us" in builtin and builtin["median_us"] > 0
        table.rows.append([record["op"], record["mode"], record.get("launches", DASH), record.get("device", DASH),
                           _us(ours) if ours else DASH, _us(builtin) if builtin else DASH,
                           f"{ours['median_us'] / builtin['median_us']:.2f}x" if timed else DASH,
                           record.get("skipped") or _note(ours) or _note(builtin)])
    return table


def train_tables(section: dict) -> list[Table]:
    table = Table("training step (fwd + bwd + AdamW)",
                  ["preset", "batch x ctx", "path", "ms/step", "tokens/s", "MFU", "peak MiB", "vs eager",
                   "first step s", "note"],
                  numeric={3, 4, 5, 6, 7, 8})
    for case in section.get("cases", []):
        for name, record in case["impls"].items():
            mfu = record.get("mfu")
            table.rows.append([
                case["preset"], f"{case['batch_size']}x{case['n_ctx']}", name, _ms(record),
                _speed(record, "tokens_per_s", _big), DASH if mfu is None or _status(record) else f"{mfu:.1%}",
                _mib(record.get("peak_mem_bytes")), _speedup(record),
                DASH if _status(record) else _num(record.get("first_call_s"), 3), _note(record),
            ])
    return [table]


def data_tables(section: dict) -> list[Table]:
    table = Table("data pipeline", ["benchmark", "setting", "median ms", "throughput", "vs baseline", "note"],
                  numeric={2, 3, 4})
    for case in section.get("cases", []):
        for name, record in case["impls"].items():
            if case["bench"] == "tokenizer-encode":
                threads = record.get("threads")
                setting = name if threads is None else f"{name} ({threads} thread{'' if threads == 1 else 's'})"
                rate = DASH if _status(record) else f"{record['mb_per_s']:,.2f} MB/s"
                bench = f"encode {case.get('text_bytes', 0) / 1e6:.2f} MB"
            elif case["bench"] == "tokenize-memory":
                ok = not _status(record)
                setting = f"peak RSS {record['peak_rss_mb']:,.0f} MB" if ok else name
                rate = f"{record['mb_per_s']:,.2f} MB/s" if ok else DASH
                bench = f"gpt1 tokenize {record['corpus_bytes'] / 1e9:.2f} GB" if ok else "gpt1 tokenize"
                table.rows.append([bench, setting, f"{record['seconds'] * 1e3:,.0f}" if ok else DASH, rate, DASH,
                                   _note(record)])
                continue
            else:
                setting = f"{name}, {case.get('batch_size', '?')} x {case.get('window', '?')} tokens"
                rate = DASH if _status(record) else f"{record['tokens_per_s']:,.0f} tokens/s"
                bench = "shard reader"
            table.rows.append([bench, setting, _ms(record), rate, _speedup(record), _note(record)])
        ratio = case.get("tokenize_vs_raw_encode")
        if isinstance(ratio, dict) and "ratio" in ratio:
            table.rows.append([f"gpt1 tokenize vs raw encode, {ratio['text_bytes'] / 1e6:.0f} MB",
                               f"{ratio['threads']} threads", DASH, f"{ratio['tokenize_mb_per_s']:,.2f} MB/s",
                               f"{ratio['ratio']:.2f}x", f"raw encode {ratio['raw_encode_mb_per_s']:,.2f} MB/s"])
    if section.get("error"):
        table.rows.append(["(section)", DASH, "error", DASH, DASH, section["error"]])
    return [table]


def generate_tables(section: dict) -> list[Table]:
    cases = section.get("cases", [])
    title = "generation (greedy, batch 1)"
    if cases:
        title += f": {cases[0]['preset']} preset, {cases[0]['new_tokens']} new tokens, {cases[0]['kernels']}"
    table = Table(title, ["prompt tokens", "impl", "median ms", "tokens/s", "vs no-cache", "note"], numeric={0, 2, 3, 4})
    for case in cases:
        for name, record in case["impls"].items():
            table.rows.append([str(case["prompt_tokens"]), name, _ms(record), _speed(record, "tokens_per_s"),
                               _speedup(record), _note(record)])
    return [table]


def gpu_check_tables(check: dict) -> list[Table]:
    """The ``gpu_check`` key of a ``make gpu-check`` results file: correctness, the model step,
    pytest and the performance targets (already judged when the file was written)."""
    tables = []
    cases = check.get("correctness", {}).get("cases", [])
    if cases:
        table = Table("gpu-check: kernels against the PyTorch references (worst error / tolerance, <= 1 passes)",
                      ["kernel", "dtype", "config", "shape", "status", "worst ratio", "note"], numeric={5})
        for case in cases:
            shape = case.get("shape") or {}
            ratio = case.get("worst_ratio")
            note = case.get("error") or case.get("reason") or ", ".join(case.get("failed_tensors", []))
            table.rows.append([case["kernel"], case["dtype"], case.get("config", "fixed"),
                               " ".join(f"{k}={v}" for k, v in shape.items() if v not in (None, 0, 0.0)),
                               case.get("status", "?"), DASH if ratio is None else f"{ratio:.3g}", note])
        tables.append(table)
    rows = []
    model = check.get("model_check") or {}
    comparison = model.get("comparison")
    if comparison:
        rows.append(["model train step, Triton vs torch path", comparison["status"],
                     f"{comparison['dtype']}: loss {comparison['triton_loss']:.5g} vs {comparison['torch_loss']:.5g} "
                     f"(rel {comparison['loss_rel_diff']:.1e}), min grad cosine {comparison['min_grad_cosine']:.5f}"])
    elif model:
        rows.append(["model train step, Triton vs torch path", model.get("status") or "?", model.get("error") or ""])
    pytest = check.get("pytest")
    if pytest:
        rows.append([f"pytest {pytest.get('command', 'tests/kernels').removeprefix('pytest ')}",
                     "failed" if pytest["failed"] or pytest["errors"] else ("timeout" if pytest.get("timed_out") else "ok"),
                     f"{pytest['passed']} passed, {pytest['failed']} failed, {pytest['errors']} errors, "
                     f"{pytest['skipped']} skipped"])
    for name, stage in check.get("stages", {}).items():
        if stage.get("status") not in ("ok", "failed"):
            rows.append([f"stage {name}", stage.get("status", "?"), stage.get("reason", "")])
    if rows:
        tables.append(Table("gpu-check: model step, pytest, unfinished stages", ["check", "status", "detail"], rows))
    targets = check.get("targets", [])
    if targets:
        marks = {True: "met", False: "NOT MET", None: "n/a"}
        tables.append(Table("gpu-check: performance targets", ["target", "need", "result", "measured"],
                            [[t["title"], t["need"], marks[t["met"]], t["detail"]] for t in targets]))
    return tables


_SECTION_TABLES = {"kernels": kernel_tables, "train": train_tables, "data": data_tables, "generate": generate_tables}


def section_tables(name: str, section: dict) -> list[Table]:
    """The tables of one section of a results file."""
    tables = _SECTION_TABLES[name](section)
    if section.get("error") and name != "data":
        tables.append(Table(f"{name}: section failed", ["error"], [[section["error"]]]))
    return tables


# ----------------------------------------------------------------------------- Markdown


def environment_line(results: dict) -> str:
    env = results.get("env", {})
    command = results.get("command", {})
    parts = [env.get("device_name", "?")]
    if env.get("driver_version"):
        parts.append(f"driver {env['driver_version']}")
    if env.get("cuda_version") and env.get("device_type") == "cuda":
        parts.append(f"CUDA {env['cuda_version']}")
    parts += [f"torch {env.get('torch')}", f"triton {env.get('triton') or 'none'} ({env.get('triton_mode')})",
              f"Python {env.get('python')}"]
    commit = env.get("git_commit")
    parts.append(f"commit {commit[:10]}" if commit else "commit unknown")
    parts.append(str(env.get("date", "?")))
    options = f"dtype {command.get('resolved_dtype', '?')}" + (", --quick" if command.get("quick") else "")
    parts.append(options)
    if not results.get("complete", True):
        parts.append("INCOMPLETE RUN")
    return " · ".join(parts)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(_cell(c) for c in table.columns) + " |",
             "|" + "|".join("---:" if i in table.numeric else "---" for i in range(len(table.columns))) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_markdown(results: dict, sections: list[str] | None = None) -> str:
    """Markdown tables for every section of ``results`` (or the named ones)."""
    if results.get("schema") != SCHEMA:
        raise Gpt1Error("not a gpt1 bench results file (no 'schema': 'gpt1-bench')")
    out = [environment_line(results), ""]
    for name in SECTION_ORDER:
        if name not in results.get("sections", {}) or (sections and name not in sections):
            continue
        for table in section_tables(name, results["sections"][name]):
            out += [markdown_table(table), ""]
    if results.get("gpu_check") and (not sections or GPU_CHECK in sections):
        for table in gpu_check_tables(results["gpu_check"]):
            out += [markdown_table(table), ""]
    return "\n".join(out).rstrip() + "\n"


def load_results(path: str | Path) -> dict:
    results = read_json(path, "benchmark results file")
    if results.get("schema") != SCHEMA:
        raise Gpt1Error(f"{path} is not a gpt1 bench results file")
    return results


def latest_results(directory: str | Path = RESULTS_DIR, *, device_type: str | None = "cuda") -> Path:
    """The newest results file in ``directory`` measured on ``device_type`` (None: any device)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise Gpt1Error(f"results directory not found: {directory}")
    found = []
    for path in directory.glob("*.json"):
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(results, dict) or results.get("schema") != SCHEMA:
            continue
        env = results.get("env", {})
        if device_type and env.get("device_type") != device_type:
            continue
        found.append((bool(results.get("complete")), str(env.get("date", "")), path.name, path))
    if not found:
        kind = f"{device_type} " if device_type else ""
        raise Gpt1Error(f"no {kind}results file in {directory}: run `gpt1 bench all` on such a machine first")
    return max(found)[3]


def run_command(action: Callable[[], None]) -> int:
    """Exit status of a command-line ``action``: 0, or 2 with a one-line error for a Gpt1Error."""
    try:
        action()
    except Gpt1Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt1_benchmarks.report",
                                     description="Print a gpt1 bench results file as Markdown tables.")
    parser.add_argument("path", nargs="?", default=str(RESULTS_DIR),
                        help=f"results file, or a directory whose newest GPU results file is used (default: {RESULTS_DIR})")
    parser.add_argument("--any-device", action="store_true",
                        help="with a directory, also consider CPU results files (default: GPU files only)")
    parser.add_argument("--section", action="append", choices=(*SECTION_ORDER, GPU_CHECK),
                        help="only this section (repeatable; default: all)")
    args = parser.parse_args(argv)

    def print_tables() -> None:
        path = Path(args.path)
        if path.is_dir():
            path = latest_results(path, device_type=None if args.any_device else "cuda")
        sys.stdout.write(render_markdown(load_results(path), args.section))

    return run_command(print_tables)


if __name__ == "__main__":
    sys.exit(main())
