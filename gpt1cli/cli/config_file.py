"""``--config FILE``: a command's settings read from a TOML, YAML or JSON file.

A file holds one mapping of settings: the keys are the settings' field names (``batch_size``),
or their options' spellings without the dashes in front (``batch-size``, ``from`` for
``--from``). The run config a training run saves is read as it is: a JSON object whose
``config`` member holds the settings (``RUN/checkpoints/step_*/trainer.json``, or
``train-state/checkpoints/...`` for fine-tuning) or ``RUN/metrics.jsonl``, whose last ``config``
record is taken; their other members (step, optimiser state, model ...) are bookkeeping and are
skipped, except the fine-tuning task they name.

Each value passes what the option would check: its type (numbers may be written as strings, as
on the command line) and the setting's rule; a bad value, an unknown key or a file that does not
parse is one :class:`~gpt1cli.errors.Gpt1Error` naming the file (and the key). A null value leaves
the setting to its default. Paths in the file are taken as they are, relative to the current
directory (as a saved run config records them), not to the file's folder.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import Gpt1Error

SUFFIXES = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".jsonl": "JSON lines"}
RUN_CONFIG = "config"  # the member of a saved run config (trainer.json, metrics.jsonl) that holds the settings


@dataclass(frozen=True)
class Known:
    """A setting a command's config file may give."""

    name: str
    annotation: Any
    rule: settings.Rule | None
    offered: bool  # False: the command line does not offer it; a file may only repeat its default
    default: Any
    spellings: tuple[str, ...]


def known_settings(offered: list[tuple[type, dataclasses.Field]], configs) -> dict[str, Known]:
    """The settings a config file of a command offering ``offered`` (over ``configs``) may give.

    Beside the offered settings, the saved settings the command line does not offer (a saved run
    config records them) are known, but only with their default value.
    """
    hints = {config: typing.get_type_hints(config) for config in {*configs, *(config for config, _ in offered)}}
    known: dict[str, Known] = {}
    for config, field in offered:
        known[field.name] = _known(field, hints[config][field.name], offered=True)
    for config in configs:
        for field in settings.fields(config):
            if field.name not in known and settings.declared(field).saved:
                known[field.name] = _known(field, hints[config][field.name], offered=False)
    return known


def _known(field: dataclasses.Field, annotation, *, offered: bool) -> Known:
    declared = settings.declared(field)
    names = [field.name, field.name.replace("_", "-")]
    for flag in declared.flags:
        first = flag.split("/")[0]
        if first.startswith("--"):
            names += [first[2:], first[2:].replace("-", "_")]
    return Known(field.name, annotation, declared.rule, offered, settings.default(field), tuple(dict.fromkeys(names)))


def read_settings(path: Path, known: dict[str, Known]) -> dict[str, Any]:
    """The settings ``path`` gives, by field name, checked; a null value is left out (the default stands)."""
    section = settings_section(read_document(path), known)
    spelled = {spelling: item for item in known.values() for spelling in item.spellings}
    found: dict[str, Any] = {}
    written: dict[str, str] = {}
    for key, value in section.items():
        item = spelled.get(key) if isinstance(key, str) else None
        if item is None:
            listed = ", ".join(sorted(name for name, k in known.items() if k.offered))
            raise Gpt1Error(f"{path}: unknown setting {key!r}; the known ones are {listed} "
                            "(dashes may stand for underscores)")
        if item.name in written:
            raise Gpt1Error(f"{path}: {written[item.name]!r} and {key!r} both set {item.name}: keep one")
        written[item.name] = key
        if value is None:
            continue
        found[item.name] = _checked(value, item, key, path)
    return {name: value for name, value in found.items() if known[name].offered}


def settings_section(document: dict, known: dict[str, Known]) -> dict:
    """The mapping of settings in ``document``: all of it, or the ``config`` member of a saved run config."""
    section = document.get(RUN_CONFIG)
    if RUN_CONFIG in known or not isinstance(section, dict):
        return document
    section = dict(section)
    # A fine-tuning run records its task beside its settings (the generate task has no task setting).
    task = document.get("task")
    if "task" in known and "task" not in section and isinstance(task, str):
        section["task"] = task
    return section


def read_document(path: Path) -> dict:
    """The top-level mapping of a TOML, YAML, JSON or JSON-lines file (see :data:`SUFFIXES`)."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise Gpt1Error(f"{path}: a config file must end in {', '.join(SUFFIXES)} (it says how to read it)")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise Gpt1Error(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Gpt1Error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        document = _parse(text, kind, path)
    except ValueError as exc:  # each parser's own error, made one line
        raise Gpt1Error(f"{path}: not valid {kind}: {' '.join(str(exc).split())}") from None
    if not isinstance(document, dict):
        raise Gpt1Error(f"{path}: a config file holds a mapping of settings, not {type(document).__name__}")
    return document


def _parse(text: str, kind: str, path: Path):
    """The parsed file; ValueError when it does not parse."""
    if kind == "TOML":
        import tomllib

        return tomllib.loads(text)
    if kind == "YAML":
        try:
            import yaml
        except ImportError:
            raise Gpt1Error(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the file as TOML "
                            "or JSON") from None
        try:
            return {} if not text.strip() else yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(str(exc)) from None
    if kind == "JSON":
        return json.loads(text)
    # A metrics log: its last start's record. A line a stopped run left half-written is skipped.
    starts = [record for record in map(_record, text.splitlines()) if isinstance(record, dict)
              and record.get("kind") == RUN_CONFIG and isinstance(record.get(RUN_CONFIG), dict)]
    if not starts:
        raise Gpt1Error(f"{path}: no run config record (kind \"config\") in this JSON-lines file")
    return starts[-1]


def _record(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None


def _checked(value, item: Known, key: str, path: Path):
    """``value`` as the option would take it: its type, then the setting's rule; errors name the file and key."""
    try:
        value = typed(value, item.annotation, key)
        if not item.offered:
            default = tuple(item.default) if isinstance(item.default, list) else item.default
            if (tuple(value) if isinstance(value, list) else value) != default:
                raise Gpt1Error(f"{key} cannot be set from the command line or a config file: it is "
                                f"{_shown(default)} here, not {_shown(value)}")
            return value
        if item.rule is not None:
            value = item.rule(value, key)
    except Gpt1Error as exc:
        raise Gpt1Error(f"{path}: {exc}") from None
    return value


def typed(value, annotation, key: str):
    """``value`` if it fits ``annotation`` (bool, int, float, str, their Optional); numbers may be
    strings, read as the command line reads them."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] if _is_union(annotation) else [annotation]
    kind = kinds[0] if len(kinds) == 1 else None
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise Gpt1Error(f"{key} must be true or false, not {_shown(value)}")
    if kind is int:
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            return value
        # 3.0 is refused, as --batch-size 3.0 is
        raise Gpt1Error(f"{key} must be an integer, not {_shown(value)}")
    if kind is float:
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise Gpt1Error(f"{key} must be a number, not {_shown(value)}")
    if kind in (str, Path):
        if isinstance(value, str):
            return value
        raise Gpt1Error(f"{key} must be a string, not {_shown(value)}")
    return value


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
