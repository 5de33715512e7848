"""Training curves of one or more runs, drawn from their ``metrics.jsonl`` (``gpt1 plot``).

Panels, each only when some run has its numbers: training and validation loss, validation
bits per byte, each fine-tuning metric (accuracy, pearson ...), learning rate and training
throughput, against the optimiser step or (``x="tokens"``, pre-training runs) the tokens
seen. Runs are overlaid, one colour each, labelled with their folder names (with as many
parent folders as it takes to tell two apart). A resumed run's curves follow what it redid
after the checkpoint it resumed from, not what it logged before it was stopped.

matplotlib (the ``plot`` extra) is imported on first use, with the headless Agg backend.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Gpt1Error
from .fileio import atomic_path
from .tracking import current_records

METRICS = "metrics.jsonl"
FORMATS = ("png", "svg", "pdf")
AXES = ("step", "tokens")

_LOSS_COLUMNS = ("loss",)
_SMOOTH_ABOVE = 40  # more points than this: the raw curve faint, an average over it drawn solid


@dataclass
class RunCurves:
    """What one run's metrics log holds for plotting (validation keys without their ``val_`` prefix)."""

    name: str
    path: Path  # the metrics.jsonl read
    kind: str  # "pretrain" or "finetune"
    metric: str | None  # a fine-tuning run's model-selection metric
    tokens_per_step: int | None  # pre-training: batch size x context
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)

    def series(self, part: str, key: str, x: str = "step") -> tuple[list[float], list[float]]:
        """``(xs, ys)`` of ``key`` in the ``part`` ("train" or "val") records that have a number for it."""
        xs, ys = [], []
        for record in getattr(self, part):
            value, step = record.get(key), record.get("step")
            if _number(value) and _number(step):
                xs.append(step * self.tokens_per_step if x == "tokens" else step)
                ys.append(float(value))
        return xs, ys


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_path(run: str | os.PathLike) -> Path:
    """The metrics log of ``run``: a run directory or the ``metrics.jsonl`` itself."""
    path = Path(run)
    if path.is_dir():
        log = path / METRICS
        if not log.is_file():
            raise Gpt1Error(f"{path} has no {METRICS}: give a run directory made by gpt1 pretrain or finetune, "
                            "or the metrics file itself")
        return log
    if path.is_file():
        return path
    raise Gpt1Error(f"no run at {path}: give a run directory (holding {METRICS}) or a {METRICS} file")


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics log, strictly: a torn last line (a run still writing, or killed
    mid-write) is left out; any other line that is not a JSON object is an error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path}: {exc.strerror or exc}") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # after the last newline: empty, or a line still being written
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
            raise Gpt1Error(f"{path} line {number} is not a metrics record: the log is damaged; "
                            "delete that line (or restore the file) and plot again")
        records.append(record)
    if torn.strip() and not records:
        raise Gpt1Error(f"{path} holds only a torn line: the run wrote nothing complete yet; plot it later")
    return records


def load_run(run: str | os.PathLike, name: str | None = None) -> RunCurves:
    """The curves of one run (a run directory or its ``metrics.jsonl``)."""
    path = metrics_path(run)
    records = current_records(read_metrics(path))
    config = next((r for r in records if r["kind"] == "config"), {})
    settings = config.get("config") if isinstance(config.get("config"), dict) else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    train = [r for r in records if r["kind"] == "train"]
    val = [{(k[4:] if k.startswith("val_") else k): v for k, v in r.items()} for r in records if r["kind"] == "eval"]
    if not train and not val:
        raise Gpt1Error(f"{path} holds no training or validation records yet: plot it once the run has logged a step")
    if settings:
        finetune = "shards" not in settings
    else:  # no config record (a log cut short at the front): pre-training logs bpb and throughput
        finetune = not any("bpb" in r for r in val) and not any("tokens_per_s" in r for r in train)
    metric = settings.get("metric") if finetune else None
    if finetune and not isinstance(metric, str):
        metric = next((m for m in ("accuracy", "pearson", "loss") if any(m in r for r in val)), None)
    tokens_per_step = None
    batch, n_ctx = settings.get("batch_size"), model.get("n_ctx")
    if not finetune and _number(batch) and _number(n_ctx):
        tokens_per_step = int(batch) * int(n_ctx)
    return RunCurves(name or run_label(path), path, "finetune" if finetune else "pretrain", metric,
                     tokens_per_step, train, val)


def run_label(metrics: Path) -> str:
    """A run's name: its folder (the folder holding the metrics file)."""
    metrics = Path(metrics).resolve()
    return metrics.parent.name if metrics.name == METRICS else metrics.stem


def run_names(paths: list[Path]) -> list[str]:
    """Names for the runs of ``paths`` (their metrics files): the folder name, with as many parent
    folders as it takes to tell different folders apart; the same folder twice is numbered."""
    folders = [Path(p).resolve().parent if Path(p).name == METRICS else Path(p).resolve().with_suffix("")
               for p in paths]
    depth = {folder: 1 for folder in folders}

    def name(folder: Path) -> str:
        return "/".join(folder.parts[-depth[folder]:]).lstrip("/") or str(folder)

    while True:
        by_name: dict[str, set[Path]] = {}
        for folder in set(folders):
            by_name.setdefault(name(folder), set()).add(folder)
        clashes = [group for group in by_name.values() if len(group) > 1]
        grown = False
        for group in clashes:
            for folder in group:
                if depth[folder] < len(folder.parts):
                    depth[folder] += 1
                    grown = True
        if not clashes or not grown:
            break
    names = [name(folder) for folder in folders]
    seen: dict[str, int] = {}
    unique = []
    for label in names:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if names.count(label) == 1 else f"{label} #{seen[label]}")
    return unique


def require_matplotlib():
    """pyplot with the headless Agg backend, or one line saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Gpt1Error("gpt1 plot needs matplotlib: pip install 'gpt1[plot]' (or pip install matplotlib)") from None
    return plt


def _format_of(out: Path) -> str:
    if out.is_dir():
        raise Gpt1Error(f"--out {out} is a directory: give a file name such as {out / 'curves.png'}")
    ext = out.suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise Gpt1Error(f"--out {out}: write a .png, .svg or .pdf file (the format follows the extension)")
    return ext


def _smoothed(values: list[float]) -> list[float]:
    """An exponential moving average over about a twentieth of the points (bias-corrected)."""
    beta = 1.0 - 1.0 / max(2.0, len(values) / 20.0)
    out, average, weight = [], 0.0, 0.0
    for value in values:
        if math.isfinite(value):
            average = beta * average + (1 - beta) * value
            weight = beta * weight + (1 - beta)
        out.append(average / weight if weight else math.nan)
    return out


@dataclass
class _Panel:
    title: str
    ylabel: str
    lines: list = field(default_factory=list)  # (run index, xs, ys, style)
    log_y: bool = False


def _panels(runs: list[RunCurves], x: str) -> list[_Panel]:
    pretrain_only = all(r.kind == "pretrain" for r in runs)
    loss = _Panel("Loss", "cross-entropy (nats per token)" if pretrain_only else "loss")
    bpb = _Panel("Validation bits per byte", "bits per byte")
    lr = _Panel("Learning rate", "learning rate")
    speed = _Panel("Training throughput", "tokens per second")
    metrics: dict[str, _Panel] = {}
    for i, run in enumerate(runs):
        for key in _LOSS_COLUMNS:
            loss.lines.append((i, *run.series("train", key, x), "train"))
            loss.lines.append((i, *run.series("val", key, x), "val"))
        bpb.lines.append((i, *run.series("val", "bpb", x), "val"))
        lr.lines.append((i, *run.series("train", "lr", x), "plain"))
        speed.lines.append((i, *run.series("train", "tokens_per_s", x), "train"))
        if run.kind == "finetune" and run.metric and run.metric != "loss":
            panel = metrics.setdefault(run.metric, _Panel(f"Validation {run.metric}", run.metric))
            panel.lines.append((i, *run.series("val", run.metric, x), "val"))
    panels = [loss, bpb, *metrics.values(), lr, speed]
    for panel in panels:
        panel.lines = [line for line in panel.lines if line[1]]
    peaks = [max(line[2]) for line in lr.lines if max(line[2]) > 0]
    lr.log_y = len(peaks) > 1 and max(peaks) > 20 * min(peaks)  # e.g. fine-tuning beside pre-training
    return [p for p in panels if p.lines]


def plot_runs(runs: list[str | os.PathLike], out: str | os.PathLike, *, x: str = "step",
              title: str | None = None, dpi: int = 110) -> dict:
    """Draw the curves of ``runs`` (run directories or metrics files) into ``out`` (.png, .svg or
    .pdf, written atomically); returns what was drawn: ``{"out", "runs", "panels"}``."""
    if not runs:
        raise Gpt1Error("give at least one run directory to plot")
    if x not in AXES:
        raise Gpt1Error(f"--x must be step or tokens, not {x!r}")
    out = Path(out)
    fmt = _format_of(out)
    paths = [metrics_path(run) for run in runs]
    curves = [load_run(path, name) for path, name in zip(paths, run_names(paths))]
    if x == "tokens":
        missing = [c for c in curves if c.tokens_per_step is None]
        if missing:
            raise Gpt1Error(f"--x tokens: the run {missing[0].name} ({missing[0].path}) has no token count "
                            "(a fine-tuning run, or its config record is missing): use --x step")
    plt = require_matplotlib()
    figure = _draw(plt, curves, x, title, fmt)
    try:
        with atomic_path(out) as tmp:
            figure.savefig(tmp, format=fmt, dpi=dpi)
    finally:
        plt.close(figure)
    return {"out": str(out), "runs": [c.name for c in curves], "panels": [p.title for p in _panels(curves, x)]}


def _draw(plt, curves: list[RunCurves], x: str, title: str | None, fmt: str):
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter, FuncFormatter

    panels = _panels(curves, x)
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.6 * rows + 0.6 + 0.28 * math.ceil(len(curves) / 4)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if len(curves) > len(colours):
        colours = [plt.get_cmap("turbo")(i / max(1, len(curves) - 1)) for i in range(len(curves))]
    xlabel = "tokens seen" if x == "tokens" else "optimiser step"
    for ax, panel in zip(axes.flat, panels):
        styles = set()
        for index, xs, ys, style in panel.lines:
            colour = colours[index % len(colours)]
            styles.add(style)
            if style == "val":
                ax.plot(xs, ys, color=colour, linestyle="--", marker="o", markersize=3.5, linewidth=1.4)
            elif style == "train" and len(ys) > _SMOOTH_ABOVE:
                ax.plot(xs, ys, color=colour, linewidth=0.8, alpha=0.25)
                ax.plot(xs, _smoothed(ys), color=colour, linewidth=1.6)
            else:
                ax.plot(xs, ys, color=colour, linewidth=1.4)
        ax.set_title(panel.title, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, alpha=0.3)
        if x == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        if panel.title == "Training throughput":
            ax.yaxis.set_major_formatter(EngFormatter(sep=""))
        elif panel.log_y:
            ax.set_yscale("log")
            ax.set_ylabel(panel.ylabel + " (log scale)")
        elif panel.title == "Learning rate":
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        if {"train", "val"} <= styles:  # say which line is which
            ax.legend(handles=[Line2D([], [], color="0.3", linewidth=1.6, label="train"),
                               Line2D([], [], color="0.3", linestyle="--", marker="o", markersize=3.5,
                                      label="validation")], loc="upper right", fontsize=9)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    # Room at the top, in inches, for the title and the legend of runs (four names a row).
    legend_rows = math.ceil(len(curves) / 4)
    height = figure.get_figheight()
    figure.tight_layout(rect=(0, 0, 1, 1 - (0.55 + 0.28 * legend_rows) / height))
    figure.suptitle(title or ("Training curves: " + ", ".join(c.name for c in curves) if len(curves) <= 3
                              else f"Training curves of {len(curves)} runs"), fontsize=13, y=1 - 0.08 / height,
                    va="top")
    handles = [Line2D([], [], color=colours[i % len(colours)], linewidth=2.5, label=c.name) for i, c in enumerate(curves)]
    figure.legend(handles=handles, loc="upper center", ncol=min(len(curves), 4), frameon=False,
                  bbox_to_anchor=(0.5, 1 - 0.38 / height), fontsize=10, borderaxespad=0, handletextpad=0.5)
    return figure
