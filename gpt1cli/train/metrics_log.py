"""Append-only JSONL metrics log (one object per line, flushed as written)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import Gpt1Error
from ..fileio import parse_json


class MetricsLog:
    """``RUN/metrics.jsonl``: every logged number, with a wall-clock timestamp."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._drop_torn_line()
            except OSError as exc:
                raise Gpt1Error(f"cannot write the metrics log {self.path}: {exc.strerror or exc}; "
                                "check the run directory is writable") from None

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
