"""`gpt1 verify`: check every recorded size and checksum of shard directories and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import Gpt1Error
from .fileio import file_hash, read_json
from .train.checkpoint import CHECKPOINTS, META, TRAINER_META, TRAINER_TENSORS, WEIGHTS


@dataclass
class Check:
    path: Path
    ok: bool
    detail: str


def _hash_check(path: Path, expected: str | None, size: int | None = None) -> Check:
    if not path.is_file():
        return Check(path, False, "missing")
    if size is not None and path.stat().st_size != size:
        return Check(path, False, f"{path.stat().st_size} bytes, expected {size}")
    if expected is None:
        return Check(path, False, "no checksum recorded")
    actual = file_hash(path)
    return Check(path, actual == expected, "ok" if actual == expected else "checksum mismatch")


def verify_shards(directory: Path) -> list[Check]:
    manifest = read_json(directory / "manifest.json", "shard manifest")
    checks = []
    tokenizer = manifest.get("tokenizer", {})
    checks.append(_hash_check(directory / str(tokenizer.get("file", "tokenizer.model")), tokenizer.get("blake2b")))
    for split in manifest.get("splits", {}).values():
        for shard in split.get("shards", []):
            checks.append(_hash_check(directory / shard["file"], shard.get("blake2b"), shard.get("bytes")))
    return checks


def verify_checkpoint(folder: Path) -> list[Check]:
    meta = read_json(folder / META, "checkpoint metadata")
    checks = [
        _hash_check(folder / WEIGHTS, meta.get("weights_blake2b")),
        _hash_check(folder / str(meta.get("tokenizer_file", "tokenizer.model")), meta.get("tokenizer_blake2b")),
    ]
    if (folder / TRAINER_META).is_file():
        trainer = read_json(folder / TRAINER_META, "trainer state")
        checks.append(_hash_check(folder / TRAINER_TENSORS, trainer.get("tensors_blake2b")))
    return checks


def verify(path: str | Path) -> list[Check]:
    """All checks for a shard directory, a checkpoint folder, or a run directory (every checkpoint)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return verify_shards(path)
    if (path / META).is_file():
        return verify_checkpoint(path)
    folders = sorted(p for p in (path / CHECKPOINTS).glob("step_*") if p.is_dir()) if (path / CHECKPOINTS).is_dir() else []
    if folders:
        return [check for folder in folders for check in verify_checkpoint(folder)]
    if not path.exists():
        raise Gpt1Error(f"not found: {path}")
    raise Gpt1Error(f"{path} is neither a shard directory, a checkpoint nor a run directory")
