"""`gpt1 verify`: check every recorded size and checksum of shard directories and checkpoints.

Every file name comes from a manifest or checkpoint and goes through :func:`plain_name` before
it is opened, so a record naming ``/home/me/.ssh/id_rsa`` or ``../x`` is an error, never a
file that verify reads (let alone calls "ok").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import (BEST, CHECKPOINTS, LATEST, META, TOKENIZER, TRAIN_STATE, TRAINER_META, TRAINER_TENSORS, WEIGHTS,
                         read_pointer)
from .errors import Gpt1Error
from .fileio import file_hash, plain_name, read_json

MANIFEST = "manifest.json"


@dataclass
class Check:
    path: Path
    ok: bool
    detail: str


def _hash_check(path: Path, expected, size=None) -> Check:
    if not path.is_file():
        return Check(path, False, "missing")
    if size is not None and path.stat().st_size != size:
        return Check(path, False, f"{path.stat().st_size} bytes, expected {size!r}")
    if not isinstance(expected, str):
        return Check(path, False, "no checksum recorded")
    actual = file_hash(path)
    return Check(path, actual == expected, "ok" if actual == expected else "checksum mismatch")


def _corrupt(source: Path, detail: str) -> Gpt1Error:
    return Gpt1Error(f"{source} {detail}: it is corrupt or not ours")


def verify_shards(directory: Path) -> list[Check]:
    source = directory / MANIFEST
    manifest = read_json(source, "shard manifest")
    tokenizer = manifest.get("tokenizer", {})
    if not isinstance(tokenizer, dict):
        raise _corrupt(source, "has a 'tokenizer' entry that is not an object")
    name = plain_name(tokenizer.get("file", "tokenizer.model"), "tokenizer file", source)
    checks = [_hash_check(directory / name, tokenizer.get("blake2b"))]
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict):
        raise _corrupt(source, "has 'splits' that is not an object")
    for split_name, split in splits.items():
        shards = split.get("shards", []) if isinstance(split, dict) else None
        if not isinstance(shards, list) or not all(isinstance(shard, dict) for shard in shards):
            raise _corrupt(source, f"has a split {split_name!r} without a list of shards")
        for shard in shards:
            name = plain_name(shard.get("file"), "shard file", source)
            checks.append(_hash_check(directory / name, shard.get("blake2b"), shard.get("bytes")))
    return checks


def verify_checkpoint(folder: Path) -> list[Check]:
    meta = read_json(folder / META, "checkpoint metadata")
    tokenizer = plain_name(meta.get("tokenizer_file", TOKENIZER), "tokenizer file", folder / META)
    checks = [
        _hash_check(folder / WEIGHTS, meta.get("weights_blake2b")),
        _hash_check(folder / tokenizer, meta.get("tokenizer_blake2b")),
    ]
    if (folder / TRAINER_META).is_file():
        trainer = read_json(folder / TRAINER_META, "trainer state")
        checks.append(_hash_check(folder / TRAINER_TENSORS, trainer.get("tensors_blake2b")))
    return checks


def _pointer_check(pointer: Path) -> Check | None:
    """``latest``/``best`` must name a complete checkpoint folder beside them."""
    try:
        name = read_pointer(pointer)
    except Gpt1Error as exc:
        return Check(pointer, False, str(exc))
    if name is None:
        return None
    if not (pointer.parent / name / META).is_file():
        return Check(pointer, False, f"names {name!r}, which is missing or incomplete")
    return Check(pointer, True, "ok")


def _run_checks(root: Path) -> list[Check]:
    """Every checkpoint folder under a run's ``checkpoints/`` and its ``latest``/``best`` pointers."""
    folders = sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    if not folders:
        return []
    checks = [check for folder in folders for check in verify_checkpoint(folder)]
    pointers = [_pointer_check(root / name) for name in (LATEST, BEST)]
    return checks + [check for check in pointers if check is not None]


def verify(path: str | Path) -> list[Check]:
    """All checks for a shard directory, a checkpoint folder, or a run directory (every checkpoint).

    Hidden entries (the writer's ``.gpt1.lock``, ``.tmp-*`` folders being written, ``.trash-*``
    folders being deleted) are not checkpoints and are not looked at.
    """
    path = Path(path)
    if (path / MANIFEST).is_file():
        return verify_shards(path)
    if (path / META).is_file():
        return verify_checkpoint(path)
    checks = _run_checks(path / CHECKPOINTS)
    if checks:
        # A fine-tuning run also keeps its resumable state in train-state/checkpoints/.
        return checks + _run_checks(path / TRAIN_STATE / CHECKPOINTS)
    if not path.exists():
        raise Gpt1Error(f"not found: {path}")
    raise Gpt1Error(f"{path} is neither a shard directory, a checkpoint nor a run directory")
