"""Experiment trackers fed from the records of ``RUN/metrics.jsonl``: TensorBoard, Weights &
Biases and CSV.

``metrics.jsonl`` stays the run's record of truth; a tracker is one more view of the same
records, chosen per run with ``--log`` (a comma-separated list of :data:`TRACKERS`):

* ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir RUN``), written
  through ``torch.utils.tensorboard``; needs the ``tensorboard`` package.
* ``wandb``: a Weights & Biases run in ``RUN/wandb/``. ``WANDB_MODE`` is respected as set; when it
  is not set, the run is ``online`` if an API key is configured (``WANDB_API_KEY`` or a netrc
  entry from ``wandb login``) and ``offline`` otherwise, so it never needs a network unless asked
  to (``wandb sync RUN/wandb/offline-run-*`` uploads an offline run later). The project is
  ``WANDB_PROJECT`` or ``gpt1``; the W&B run is named (and grouped) after the run folder. Online, a
  resumed run continues the same W&B run (its id is kept in ``RUN/wandb/gpt1-run-id``); offline,
  where W&B cannot resume, it starts a new one in the same group that is given the run's history
  first, so the newest holds the whole curve. Needs the ``wandb`` package.
* ``csv``: ``RUN/metrics.csv``, one row per record but the ``config`` one, columns ``kind``,
  ``step``, ``time`` then every other key in the order first seen. It is rebuilt from
  ``metrics.jsonl`` when the run (re)starts and rewritten whenever a record brings a new column,
  so it always has one header and opens cleanly in a spreadsheet.

Scalars are named ``train/<key>`` for training records and ``val/<key>`` for validation ones
(``val_loss`` is ``val/loss``); other records with numbers (``skip``) get ``<kind>/<key>``.
A tracker that starts on a run which already has records, with no history of its own (say
``--log tensorboard`` first given on ``--resume``), is given those records first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import netrc
import os
import uuid
from pathlib import Path
from urllib.parse import urlparse

from .errors import Gpt1Error
from .fileio import atomic_write_text

TRACKERS = ("tensorboard", "wandb", "csv")
"""What ``--log`` may name, comma-separated."""

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"
WANDB_ID = "gpt1-run-id"
CSV_FILE = "metrics.csv"
DEFAULT_PROJECT = "gpt1"

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the package it needs
_NOT_SCALARS = ("step", "time")


# ---------------------------------------------------------------------------------------------
# The setting


def parse_trackers(value: str | None, name: str = "--log") -> tuple[str, ...]:
    """The trackers a ``--log`` value names, in order, each once (None or "" names none)."""
    if value is None:
        return ()
    if not isinstance(value, str):
        raise Gpt1Error(f"{name} must be a comma-separated list of {', '.join(TRACKERS)}, got {value!r}")
    chosen: list[str] = []
    for part in value.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part not in TRACKERS:
            raise Gpt1Error(f"{name}: unknown tracker {part!r}; choose among {', '.join(TRACKERS)} "
                            "(comma-separated, e.g. tensorboard,csv)")
        if part not in chosen:
            chosen.append(part)
    return tuple(chosen)


def trackers_rule(value, name):
    """Settings rule: a comma-separated list of :data:`TRACKERS` (or None)."""
    parse_trackers(value, name)
    return value


def require_packages(trackers: str | tuple[str, ...] | None) -> None:
    """Fail with one line, before anything is written, when a tracker's package is not installed."""
    names = parse_trackers(trackers) if isinstance(trackers, str) or trackers is None else tuple(trackers)
    for tracker in names:
        package = _PACKAGES.get(tracker)
        if package is not None:
            _import(package, tracker)


def _import(package: str, tracker: str):
    try:
        return __import__(package)
    except ImportError:
        raise Gpt1Error(f"--log {tracker} needs the {package} package: pip install {package}") from None


# ---------------------------------------------------------------------------------------------
# Records -> scalars


def scalars(record: dict) -> tuple[int | None, dict[str, float]]:
    """``(step, {tag: value})``: the numbers of a record as trackers name them (no numbers: {})."""
    kind = record.get("kind")
    step = record.get("step")
    step = step if isinstance(step, int) and not isinstance(step, bool) else None
    if kind in ("config", "resume", "stop") or not isinstance(kind, str):
        return step, {}
    prefix = "val" if kind == "eval" else kind
    found = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or key == "kind" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if kind == "eval" and key.startswith("val_"):
            key = key[4:]
        found[f"{prefix}/{key}"] = float(value)
    return step, found


def current_records(records: list[dict]) -> list[dict]:
    """``records`` less those a resumed run went back over: a ``resume`` record at step S drops
    the records before it of steps after S (the run continued from its checkpoint of step S)."""
    kept: list[dict] = []
    for record in records:
        step = record.get("step")
        if record.get("kind") == "resume" and isinstance(step, int):
            kept = [r for r in kept if not (isinstance(r.get("step"), int) and r["step"] > step
                                            and r.get("kind") not in ("config", "resume"))]
        kept.append(record)
    return kept


# ---------------------------------------------------------------------------------------------
# Trackers


class Tracker:
    """One view of the records: ``log`` each as it is written, ``close`` at the end."""

    name = ""

    def log(self, record: dict) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        """Flush and release; ``failed``: the run ended on an exception."""


class CsvTracker(Tracker):
    """``RUN/metrics.csv``: one row per record (the ``config`` record left out)."""

    name = "csv"

    def __init__(self, run_dir: Path, history: list[dict]):
        self.path = Path(run_dir) / CSV_FILE
        self.columns: list[str] = ["kind", "step", "time"]
        self.rows: list[dict] = []
        for record in history:
            self._add(record)
        self._rewrite()

    @staticmethod
    def _wanted(record: dict) -> bool:
        return record.get("kind") != "config"

    def _add(self, record: dict) -> bool:
        """Keep ``record`` as a row; True when it brought a new column."""
        if not self._wanted(record):
            return False
        new = [key for key in record if key not in self.columns]
        self.columns.extend(new)
        row = {key: _cell(value) for key, value in record.items()}
        self.rows.append(row)
        return bool(new)

    def _text(self, rows: list[dict], header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def _rewrite(self) -> None:
        atomic_write_text(self.path, self._text(self.rows, header=True))

    def log(self, record: dict) -> None:
        if not self._wanted(record):
            return
        if self._add(record):
            self._rewrite()
            return
        try:
            with open(self.path, "a", encoding="utf-8", newline="") as handle:
                handle.write(self._text(self.rows[-1:], header=False))
        except OSError as exc:
            raise Gpt1Error(f"cannot write {self.path}: {exc.strerror or exc}; free some disk space or "
                            "check the run directory is writable") from None


def _cell(value):
    """A CSV cell: numbers and text as they are, None empty, anything nested as JSON."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return value


class TensorBoardTracker(Tracker):
    """Event files in ``RUN/tensorboard/``, flushed after every record."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, history: list[dict], run_config: dict | None):
        _import("tensorboard", "tensorboard")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise Gpt1Error(f"--log tensorboard cannot load torch.utils.tensorboard ({exc}): "
                            "pip install -U tensorboard") from None
        self.dir = Path(run_dir) / TENSORBOARD_DIR
        self._summary_writer = SummaryWriter
        self.writer = None  # made on the first record (a resume record first: purging what it redoes)
        if not any(self.dir.glob("events.out.tfevents.*")):
            self.writer = self._writer()
            if run_config:
                self.writer.add_text("run_config", _as_markdown(run_config), 0)
            for record in current_records(history):
                self._log(record)
            self.writer.flush()

    def _writer(self, purge_step: int | None = None):
        try:
            return self._summary_writer(log_dir=str(self.dir), max_queue=1000, flush_secs=30, purge_step=purge_step)
        except OSError as exc:
            raise Gpt1Error(f"cannot write TensorBoard events to {self.dir}: {exc.strerror or exc}; "
                            "check the run directory is writable") from None

    def _log(self, record: dict) -> None:
        step, values = scalars(record)
        if record.get("kind") == "config":
            self.writer.add_text("config", _as_markdown({k: v for k, v in record.items() if k not in ("kind", "time")}),
                                 step or 0)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step, walltime=record.get("time"))

    def log(self, record: dict) -> None:
        step = record.get("step")
        if record.get("kind") == "resume" and isinstance(step, int):
            # Events of the steps after the checkpoint resumed from are hidden: they are redone.
            if self.writer is not None:
                self.writer.close()
            self.writer = self._writer(purge_step=step + 1)
        elif self.writer is None:
            self.writer = self._writer()
        self._log(record)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _as_markdown(obj: dict) -> str:
    """A dict as TensorBoard's text plugin shows it readably: an indented JSON code block."""
    return "```\n" + json.dumps(obj, indent=2, default=str) + "\n```"


def wandb_mode(environ=os.environ) -> str:
    """``WANDB_MODE`` when set; else online with an API key configured, offline without one."""
    mode = environ.get("WANDB_MODE", "").strip()
    if mode:
        return mode
    return "online" if _has_wandb_key(environ) else "offline"


def _has_wandb_key(environ) -> bool:
    if environ.get("WANDB_API_KEY", "").strip():
        return True
    host = urlparse(environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:
        return netrc.netrc(environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker(Tracker):
    """A W&B run in ``RUN/wandb/`` (see the module's notes on the mode and on resuming)."""

    name = "wandb"

    def __init__(self, run_dir: Path, history: list[dict], run_config: dict | None):
        wandb = _import("wandb", "wandb")
        run_dir = Path(run_dir)
        folder = run_dir / WANDB_DIR
        id_file = folder / WANDB_ID
        try:
            folder.mkdir(parents=True, exist_ok=True)
            run_id = id_file.read_text(encoding="utf-8").strip() if id_file.is_file() else ""
        except OSError as exc:
            raise Gpt1Error(f"cannot use {folder} for the W&B run: {exc.strerror or exc}; "
                            "check the run directory is writable") from None
        self.mode = wandb_mode()
        # W&B resumes a run online only (offline it ignores resume=): offline, every start is a
        # W&B run of its own, grouped by the run's name and given the run's history first.
        fresh = not run_id or self.mode != "online"
        if fresh:
            run_id = uuid.uuid4().hex[:12]
        config = dict(run_config or {})
        if not config:
            config = next((_config_of(r) for r in history if r.get("kind") == "config"), {})
        name = run_dir.resolve().name
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT, name=name, group=name,
                                  id=run_id, resume=None if fresh else "allow", dir=str(run_dir), mode=self.mode,
                                  config=config)
        except Exception as exc:  # the package's own errors (no network, bad key, bad mode ...)
            hint = "" if self.mode == "offline" else "; set WANDB_MODE=offline to log without a network"
            raise Gpt1Error(f"--log wandb could not start a W&B run in {self.mode} mode: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}{hint}") from None
        atomic_write_text(id_file, run_id + "\n")
        # Replayed with the first record logged: a resume record first drops the steps it redoes
        # (W&B keeps the first value logged at a step).
        self._history = list(history) if fresh and history else None

    def log(self, record: dict) -> None:
        if self._history is not None:
            records, self._history = current_records([*self._history, record]), None
            for each in records:
                self._log(each)
        else:
            self._log(record)

    def _log(self, record: dict) -> None:
        if record.get("kind") == "config":
            self.run.config.update(_config_of(record), allow_val_change=True)
            return
        step, values = scalars(record)
        if values:
            if step is None:
                self.run.log(values)
            else:
                self.run.log(values, step=step)

    def close(self, failed: bool = False) -> None:
        if self._history is not None:
            records, self._history = current_records(self._history), None
            for record in records:
                self._log(record)
        self.run.finish(exit_code=1 if failed else 0)


def _config_of(record: dict) -> dict:
    """A ``config`` record as a W&B config: the run's settings, with the rest beside them."""
    config = dict(record.get("config") or {})
    config.update({k: v for k, v in record.items() if k not in ("kind", "time", "config")})
    return config


def open_trackers(trackers: str | None, run_dir: str | Path, history: list[dict],
                  run_config: dict | None = None) -> list[Tracker]:
    """Start the trackers ``trackers`` names for the run in ``run_dir``; ``history``: the records
    the run already has (replayed to a tracker with no history of its own).

    Every package needed is checked before any tracker starts, so a missing one fails the run
    before it writes anything. A tracker that fails to start closes those started before it.
    """
    names = parse_trackers(trackers)
    require_packages(names)
    started: list[Tracker] = []
    try:
        for name in names:
            if name == "csv":
                started.append(CsvTracker(Path(run_dir), history))
            elif name == "tensorboard":
                started.append(TensorBoardTracker(Path(run_dir), history, run_config))
            else:
                started.append(WandbTracker(Path(run_dir), history, run_config))
    except BaseException:
        for tracker in started:
            tracker.close(failed=True)
        raise
    return started
