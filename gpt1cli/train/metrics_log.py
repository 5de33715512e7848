"""Append-only JSONL metrics log (one object per line, flushed as written), and the trackers
(TensorBoard, W&B, CSV: :mod:`gpt1cli.tracking`) fed from the same records."""

from __future__ import annotations

import atexit
import json
import time
from pathlib import Path

from ..errors import Gpt1Error
from ..fileio import parse_json
from ..tracking import Tracker, open_trackers, require_packages


class MetricsLog:
    """``RUN/metrics.jsonl``: every logged number, with a wall-clock timestamp.

    ``trackers``: a ``--log`` value (``"tensorboard,csv"``) naming trackers that get every record
    too, their files in the run directory; ``run_config``: the settings they record with the run
    (else the ``config`` record's). A log without a path (the ranks but 0) writes nothing and
    starts no tracker. :meth:`close` (or ``with``) finishes the trackers; each record is flushed
    as it is written, and trackers still open when the process exits are closed then.
    """

    def __init__(self, path: str | Path | None, *, trackers: str | None = None, run_config: dict | None = None):
        self.path = Path(path) if path is not None else None
        self.trackers: list[Tracker] = []
        if self.path is None:
            return
        require_packages(trackers)  # before anything is written
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._drop_torn_line()
        except OSError as exc:
            raise Gpt1Error(f"cannot write the metrics log {self.path}: {exc.strerror or exc}; "
                            "check the run directory is writable") from None
        if trackers:
            history = read_records(self.path)
            self.trackers = open_trackers(trackers, self.path.parent, history, run_config)
            if self.trackers:
                atexit.register(self.close)

    def _drop_torn_line(self) -> None:
        """A process killed mid-write leaves a partial last line: cut it so every line parses."""
        if not self.path.is_file():
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data and not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)

    def write(self, kind: str, **values) -> None:
        if self.path is None:
            return
        record = {"kind": kind, "time": round(time.time(), 3), **values}
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise Gpt1Error(f"cannot write the metrics log {self.path}: {exc.strerror or exc}; "
                            "free some disk space or check the run directory is writable") from None
        for tracker in self.trackers:
            tracker.log(record)

    def close(self, failed: bool = False) -> None:
        """Finish every tracker (``failed``: the run ended on an exception); later calls do nothing."""
        trackers, self.trackers = self.trackers, []
        if not trackers:
            return
        atexit.unregister(self.close)
        error = None
        for tracker in trackers:
            try:
                tracker.close(failed=failed)
            except Exception as exc:  # one tracker failing to close must not keep the others open
                error = error or exc
        if error is not None and not failed:
            raise Gpt1Error(f"a tracker failed to close: {error}") from None

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def read_records(path: str | Path) -> list[dict]:
    """The records of a metrics log that parse as JSON objects (a torn or damaged line is skipped)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    records = []
    for line in data.splitlines():
        try:
            record = parse_json(line.decode("utf-8"), str(path))
        except (Gpt1Error, UnicodeDecodeError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
