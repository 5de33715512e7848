"""Token shards: Arrow IPC files of one flat integer column, plus a JSON manifest.

Each shard holds one record batch with a single ``tokens`` column (uint16 when the vocabulary
fits, else uint32), uncompressed, so a memory-mapped shard is read as a numpy view of the
file with no copy. The manifest, written last, is what makes a shard directory complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import Gpt1Error
from ..fileio import atomic_path, file_hash, read_json

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT = "gpt1-shards"
FORMAT_VERSION = 1
COLUMN = "tokens"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class ShardWriter:
    """Buffers a split's tokens and writes a shard each time ``tokens_per_shard`` are ready."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, tokens_per_shard: int):
        if tokens_per_shard <= 0:
            raise Gpt1Error(f"--tokens-per-shard must be positive, got {tokens_per_shard}")
        self.out_dir, self.split, self.dtype = out_dir, split, dtype
        self.tokens_per_shard = tokens_per_shard
        self._buffer = np.empty(tokens_per_shard, dtype=dtype)
        self._filled = 0
        self.shards: list[dict] = []
        self.tokens = 0
        self.documents = 0
        self.text_bytes = 0

    def add_document(self, tokens: list[int] | np.ndarray, n_bytes: int) -> None:
        array = np.asarray(tokens, dtype=self.dtype)
        self.documents += 1
        self.text_bytes += n_bytes
        self.tokens += len(array)
        while len(array):
            take = min(len(array), self.tokens_per_shard - self._filled)
            self._buffer[self._filled : self._filled + take] = array[:take]
            self._filled += take
            array = array[take:]
            if self._filled == self.tokens_per_shard:
                self._flush()

    def take_tail(self, count: int) -> np.ndarray:
        """Remove and return the last ``count`` buffered tokens (to seed an empty validation split)."""
        count = min(count, self._filled)
        tail = self._buffer[self._filled - count : self._filled].copy()
        self._filled -= count
        self.tokens -= count
        return tail

    def close(self) -> None:
        if self._filled:
            self._flush()

    def _flush(self) -> None:
        name = f"{self.split}_{len(self.shards):05d}.arrow"
        path = self.out_dir / name
        write_shard(path, self._buffer[: self._filled])
        self.shards.append({"file": name, "tokens": int(self._filled), "bytes": path.stat().st_size, "blake2b": file_hash(path)})
        self._filled = 0

    def summary(self) -> dict:
        return {"tokens": self.tokens, "documents": self.documents, "text_bytes": self.text_bytes, "shards": self.shards}

    def pending(self) -> np.ndarray:
        """Tokens buffered but not yet written to a shard."""
        return self._buffer[: self._filled]

    def restore(self, summary: dict, pending: np.ndarray) -> None:
        """Continue from a :meth:`summary` and :meth:`pending` saved by an interrupted run."""
        self.shards = list(summary["shards"])
        self.tokens, self.documents, self.text_bytes = summary["tokens"], summary["documents"], summary["text_bytes"]
        self._filled = len(pending)
        self._buffer[: self._filled] = pending


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write ``tokens`` as a one-batch, uncompressed Arrow IPC file, atomically."""
    batch = pa.record_batch([pa.array(tokens)], names=[COLUMN])
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)


def _map_shard(path: Path, entry: dict, dtype: np.dtype) -> np.ndarray:
    """Memory-map one shard and return a zero-copy, read-only numpy view of its tokens."""
    if not path.is_file():
        raise Gpt1Error(f"shard missing: {path}; re-run `gpt1 tokenize`")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise Gpt1Error(f"shard {path} has {size} bytes, the manifest says {entry.get('bytes')}: it is truncated or was changed; re-run `gpt1 tokenize`")
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        if reader.num_record_batches != 1:
            raise pa.ArrowInvalid("expected one record batch")
        batch = reader.get_batch(0)
        if batch.schema.names != [COLUMN] or batch.column(0).type != pa.from_numpy_dtype(dtype):
            raise pa.ArrowInvalid(f"unexpected schema {batch.schema}")
        tokens = batch.column(0).to_numpy(zero_copy_only=True)
    except (pa.ArrowException, OSError) as exc:
        raise Gpt1Error(f"shard {path} is corrupt ({exc}); re-run `gpt1 tokenize`") from None
    if len(tokens) != entry.get("tokens"):
        raise Gpt1Error(f"shard {path} holds {len(tokens)} tokens, the manifest says {entry.get('tokens')}; re-run `gpt1 tokenize`")
    return tokens


class TokenSplit:
    """One split (train or val) of a shard directory as a single logical token array."""

    def __init__(self, directory: Path, name: str, entry: dict, dtype: np.dtype):
        self.name = name
        self.documents = int(entry.get("documents", 0))
        self.text_bytes = int(entry.get("text_bytes", 0))
        self.arrays = [_map_shard(directory / shard["file"], shard, dtype) for shard in entry.get("shards", [])]
        sizes = [len(a) for a in self.arrays]
        self.offsets = np.cumsum([0] + sizes)
        self.tokens = int(self.offsets[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` as a new int64 array (a window may span shards)."""
        if start < 0 or start + length > self.tokens:
            raise IndexError(f"window {start}+{length} outside {self.tokens} tokens")
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pieces, position = [], start
        shard = first
        while position < start + length:
            local = position - int(self.offsets[shard])
            take = min(len(self.arrays[shard]) - local, start + length - position)
            pieces.append(self.arrays[shard][local : local + take])
            position += take
            shard += 1
        return np.concatenate(pieces).astype(np.int64) if len(pieces) > 1 else pieces[0].astype(np.int64)

    def tokens_per_byte(self) -> float:
        return self.tokens / self.text_bytes if self.text_bytes else float("nan")


@dataclass
class ShardInfo:
    vocab_size: int
    tokenizer_hash: str
    dtype: np.dtype


class ShardDataset:
    """A shard directory: manifest, tokenizer and memory-mapped train/val splits."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise Gpt1Error(f"shard directory not found: {self.directory}; create it with `gpt1 tokenize`")
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise Gpt1Error(f"{self.directory} has no {MANIFEST}: it is not a finished `gpt1 tokenize` output")
        self.manifest = read_json(manifest_path, "shard manifest")
        if self.manifest.get("format") != FORMAT:
            raise Gpt1Error(f"{manifest_path} is not a gpt1 shard manifest")
        try:
            tokenizer = self.manifest["tokenizer"]
            self.vocab_size = int(tokenizer["vocab_size"])
            self.tokenizer_hash = str(tokenizer["blake2b"])
            self.dtype = np.dtype(self.manifest["dtype"])
            splits = self.manifest["splits"]
            self.train = TokenSplit(self.directory, "train", splits["train"], self.dtype)
            self.val = TokenSplit(self.directory, "val", splits["val"], self.dtype)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # fields of the wrong type or shape
            raise Gpt1Error(f"{manifest_path} is incomplete or malformed ({type(exc).__name__}: {exc}); re-run `gpt1 tokenize`") from None
        self.tokenizer_path = self.directory / str(tokenizer.get("file", TOKENIZER_FILE))

    def split(self, name: str) -> TokenSplit:
        return {"train": self.train, "val": self.val}[name]


class WindowSampler:
    """Random ``n_ctx + 1`` token windows, a pure function of (seed, step).

    Being stateless makes resumption exact from any step, and lets every rank of a
    distributed run draw the same global batch and take its own slice.
    """

    def __init__(self, split: TokenSplit, n_ctx: int, seed: int):
        if split.tokens < n_ctx + 1:
            raise Gpt1Error(
                f"the {split.name} split has {split.tokens} tokens, fewer than one window of {n_ctx + 1}: "
                "use more text or a preset with a shorter context"
            )
        self.split, self.n_ctx, self.seed = split, n_ctx, seed

    def starts(self, step: int, global_batch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.split.tokens - self.n_ctx, size=global_batch)

    def windows(self, starts: np.ndarray) -> np.ndarray:
        return np.stack([self.split.read(int(s), self.n_ctx + 1) for s in starts])


def eval_windows(split: TokenSplit, n_ctx: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """Non-overlapping windows ``(start, length)`` covering the split (or its first ``max_tokens``)."""
    total = split.tokens if max_tokens is None else min(split.tokens, max_tokens + 1)
    if total < 2:
        raise Gpt1Error(f"the {split.name} split has {split.tokens} tokens: too few to evaluate")
    count = max(1, math.ceil((total - 1) / n_ctx))
    windows = []
    for i in range(count):
        start = i * n_ctx
        length = min(n_ctx + 1, total - start)
        if length >= 2:
            windows.append((start, length))
    return windows
