"""Token shards: Arrow IPC files of one flat integer column, plus a JSON manifest.

Each shard holds one record batch with a single ``tokens`` column (uint16 when the vocabulary
fits, else uint32), uncompressed, so a memory-mapped shard is read as a numpy view of the
file with no copy. The manifest, written last, is what makes a shard directory complete.

Nothing in a manifest is trusted: names must be plain file names in the directory, numbers
whole and in range, the tokenizer file must match its recorded BLAKE2b, and no token id may
fall outside the vocabulary.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..checks import check_number
from ..errors import Gpt1Error
from ..fileio import atomic_path, file_hash, plain_name, read_json
from ..tokenizer import load_tokenizer

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
FORMAT = "gpt1-shards"
FORMAT_VERSION = 1
COLUMN = "tokens"
SPLITS = ("train", "val")
MAX_TOKENS_PER_SHARD = 1 << 31  # one Arrow record batch; also bounds the writer's buffer
MAX_VOCAB = 1 << 22
SHARD_NAME = re.compile(r"^(train|val)_\d{5,}\.arrow\Z")
_INITIAL_BUFFER = 1 << 20
_MAX_COUNT = 2**63 - 1  # token, document and byte counts (numpy's int64)
HEX_DIGEST = re.compile(r"^[0-9a-f]{64}\Z")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def check_tokens_per_shard(value) -> int:
    """``--tokens-per-shard``: a whole number from 1 to 2^31 (checked before anything is allocated)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise Gpt1Error(f"--tokens-per-shard must be a whole number, got {value!r}")
    if value <= 0:
        raise Gpt1Error(f"--tokens-per-shard must be positive, got {value}")
    check_number(int(value), "--tokens-per-shard", maximum=MAX_TOKENS_PER_SHARD)
    return int(value)


class ShardWriter:
    """Buffers a split's tokens and writes a shard each time ``tokens_per_shard`` are ready."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, tokens_per_shard: int):
        self.tokens_per_shard = check_tokens_per_shard(tokens_per_shard)
        self.out_dir, self.split, self.dtype = out_dir, split, np.dtype(dtype)
        # Grown on demand: a large --tokens-per-shard costs memory only once the tokens are there.
        self._buffer = np.empty(min(self.tokens_per_shard, _INITIAL_BUFFER), dtype=self.dtype)
        self._filled = 0
        self.shards: list[dict] = []
        self.tokens = 0
        self.documents = 0
        self.text_bytes = 0

    def _reserve(self, count: int) -> None:
        if count > len(self._buffer):
            grown = np.empty(min(max(count, 2 * len(self._buffer)), self.tokens_per_shard), dtype=self.dtype)
            grown[: self._filled] = self._buffer[: self._filled]
            self._buffer = grown

    def add_tokens(self, tokens) -> None:
        """Append tokens to the split (documents and bytes are counted by the caller)."""
        array = np.asarray(tokens, dtype=self.dtype)
        self.tokens += len(array)
        position = 0
        while position < len(array):
            take = min(len(array) - position, self.tokens_per_shard - self._filled)
            self._reserve(self._filled + take)
            self._buffer[self._filled : self._filled + take] = array[position : position + take]
            self._filled += take
            position += take
            if self._filled == self.tokens_per_shard:
                self._flush()

    def add_document(self, tokens: list[int] | np.ndarray, n_bytes: int) -> None:
        self.add_tokens(tokens)
        self.documents += 1
        self.text_bytes += n_bytes

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
        tokens = self._buffer[: self._filled]
        size, digest = write_shard(self.out_dir / name, tokens)
        self.shards.append({"file": name, "tokens": int(self._filled), "bytes": size, "blake2b": digest,
                            "max_token": int(tokens.max())})
        self._filled = 0

    def summary(self) -> dict:
        return {"tokens": self.tokens, "documents": self.documents, "text_bytes": self.text_bytes, "shards": self.shards}

    def pending(self) -> np.ndarray:
        """Tokens buffered but not yet written to a shard."""
        return self._buffer[: self._filled]

    def restore(self, summary: dict, pending: np.ndarray) -> None:
        """Continue from a :meth:`summary` and :meth:`pending` saved by an interrupted run (both checked by the caller)."""
        self.shards = list(summary["shards"])
        self.tokens, self.documents, self.text_bytes = summary["tokens"], summary["documents"], summary["text_bytes"]
        self._filled = 0
        self._reserve(len(pending))
        self._buffer[: len(pending)] = pending
        self._filled = len(pending)


def write_shard(path: Path, tokens: np.ndarray) -> tuple[int, str]:
    """Write ``tokens`` as a one-batch, uncompressed Arrow IPC file, atomically; return its size and BLAKE2b."""
    batch = pa.record_batch([pa.array(tokens)], names=[COLUMN])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = memoryview(sink.getvalue())
    digest = hashlib.blake2b(data, digest_size=32).hexdigest()  # what file_hash gives, from memory
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return len(data), digest


# ---------------------------------------------------------------------------------------------
# Reading


def _corrupt(source: Path, detail: str) -> Gpt1Error:
    return Gpt1Error(f"{source} {detail}: the manifest is corrupt or was edited; re-run `gpt1 tokenize`")


def _field(mapping: dict, key: str, what: str, source: Path, *, default=None):
    if key not in mapping:
        if default is not None:
            return default
        raise _corrupt(source, f"lacks {what}")
    return mapping[key]


def _object(value, what: str, source: Path) -> dict:
    if not isinstance(value, dict):
        raise _corrupt(source, f"has {what} that is not a JSON object")
    return value


def _whole(value, what: str, source: Path, *, minimum: int = 0, maximum: int | None = None) -> int:
    """A whole number from a manifest, within bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _corrupt(source, f"gives {what} as {_short(value)}, not a whole number")
    try:
        check_number(value, what, minimum=minimum, maximum=maximum)
    except Gpt1Error as exc:
        raise _corrupt(source, f"is out of range: {exc}") from None
    return value


def _file_name(value, what: str, source: Path) -> str:
    """A recorded file name: plain (see plain_name) and printable, so every message naming it is one line."""
    name = plain_name(value, what, source)
    if not name.isprintable():
        raise _corrupt(source, f"names {what} {name!r}, which holds control characters")
    return name


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _map_shard(path: Path, entry: dict, dtype: np.dtype) -> np.ndarray:
    """Memory-map one shard and return a zero-copy, read-only numpy view of its tokens."""
    if not path.is_file():
        raise Gpt1Error(f"shard missing: {path}; re-run `gpt1 tokenize`")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise Gpt1Error(f"shard {path} has {size} bytes, the manifest says {entry['bytes']}: it is truncated or was changed; re-run `gpt1 tokenize`")
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        if reader.num_record_batches != 1:
            raise pa.ArrowInvalid("expected one record batch")
        batch = reader.get_batch(0)
        if batch.schema.names != [COLUMN] or batch.column(0).type != pa.from_numpy_dtype(dtype):
            raise pa.ArrowInvalid(f"unexpected schema {batch.schema}")
        if batch.column(0).null_count:
            raise pa.ArrowInvalid("null tokens")
        tokens = batch.column(0).to_numpy(zero_copy_only=True)
    except (pa.ArrowException, OSError) as exc:
        raise Gpt1Error(f"shard {path} is corrupt ({exc}); re-run `gpt1 tokenize`") from None
    if len(tokens) != entry["tokens"]:
        raise Gpt1Error(f"shard {path} holds {len(tokens)} tokens, the manifest says {entry['tokens']}; re-run `gpt1 tokenize`")
    return tokens


class TokenSplit:
    """One split (train or val) of a shard directory as a single logical token array."""

    def __init__(self, directory: Path, name: str, entry: dict, dtype: np.dtype, vocab_size: int | None = None,
                 source: Path | None = None):
        source = source or directory / MANIFEST
        entry = _object(entry, f"the {name} split", source)
        self.name = name
        self.documents = _whole(entry.get("documents", 0), f"{name}.documents", source, maximum=_MAX_COUNT)
        self.text_bytes = _whole(entry.get("text_bytes", 0), f"{name}.text_bytes", source, maximum=_MAX_COUNT)
        shards = entry.get("shards", [])
        if not isinstance(shards, list):
            raise _corrupt(source, f"has {name}.shards that is not a list")
        self.arrays = []
        for index, shard in enumerate(shards):
            what = f"{name} shard {index}"
            shard = _object(shard, what, source)
            checked = {
                "file": _file_name(_field(shard, "file", f"the file of {what}", source), f"{what} file", source),
                "tokens": _whole(_field(shard, "tokens", f"the tokens of {what}", source), f"{what} tokens", source,
                                 minimum=1, maximum=MAX_TOKENS_PER_SHARD),
                "bytes": _whole(_field(shard, "bytes", f"the size of {what}", source), f"{what} bytes", source,
                                minimum=1, maximum=1 << 40),
            }
            path = directory / checked["file"]
            tokens = _map_shard(path, checked, dtype)
            if vocab_size is not None:
                if "max_token" in shard:
                    largest = _whole(shard["max_token"], f"{what} max_token", source, maximum=MAX_VOCAB)
                else:  # a manifest from before max_token was recorded
                    largest = int(tokens.max())
                if largest >= vocab_size:
                    raise Gpt1Error(f"shard {path} holds token id {largest}, outside the vocabulary of {vocab_size} "
                                    "the manifest names: the shard or the manifest was changed; re-run `gpt1 tokenize`")
            self.arrays.append(tokens)
        sizes = [len(a) for a in self.arrays]
        self.offsets = np.cumsum([0] + sizes)
        self.tokens = int(self.offsets[-1])
        if "tokens" in entry and _whole(entry["tokens"], f"{name}.tokens", source, maximum=_MAX_COUNT) != self.tokens:
            raise _corrupt(source, f"says the {name} split has {entry['tokens']} tokens, its shards hold {self.tokens}")

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
    """A shard directory: manifest, tokenizer and memory-mapped train/val splits, all checked on open."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise Gpt1Error(f"shard directory not found: {self.directory}; create it with `gpt1 tokenize`")
        source = self.directory / MANIFEST
        if not source.is_file():
            raise Gpt1Error(f"{self.directory} has no {MANIFEST}: it is not a finished `gpt1 tokenize` output")
        self.manifest = manifest = read_json(source, "shard manifest")
        if manifest.get("format") != FORMAT:
            raise Gpt1Error(f"{source} is not a gpt1 shard manifest")
        version = manifest.get("version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise Gpt1Error(f"{source} has shard format version {_short(version)}; this gpt1 reads version {FORMAT_VERSION}")
        tokenizer = _object(_field(manifest, "tokenizer", "the tokenizer", source), "'tokenizer'", source)
        self.vocab_size = _whole(_field(tokenizer, "vocab_size", "the vocabulary size", source), "tokenizer.vocab_size",
                                 source, minimum=2, maximum=MAX_VOCAB)
        self.tokenizer_hash = _field(tokenizer, "blake2b", "the tokenizer's BLAKE2b", source)
        if not isinstance(self.tokenizer_hash, str) or not HEX_DIGEST.match(self.tokenizer_hash):
            raise _corrupt(source, f"gives the tokenizer's BLAKE2b as {_short(self.tokenizer_hash)}")
        name = _file_name(tokenizer.get("file", TOKENIZER_FILE), "its tokenizer file", source)
        self.tokenizer_path = self.directory / name
        dtype = manifest.get("dtype")
        expected = token_dtype(self.vocab_size)
        if dtype != expected.name:
            raise _corrupt(source, f"gives the token type as {_short(dtype)}; a vocabulary of {self.vocab_size} is stored as {expected.name}")
        self.dtype = expected
        # Numbers the reader does not use are checked too: a manifest with one absurd value is not trusted.
        for key, bounds in (("tokens_per_shard", dict(minimum=1, maximum=MAX_TOKENS_PER_SHARD)),
                            ("seed", dict(minimum=0, maximum=2**63 - 1))):
            if key in manifest:
                _whole(manifest[key], key, source, **bounds)
        if "val_fraction" in manifest:
            fraction = manifest["val_fraction"]
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise _corrupt(source, f"gives val_fraction as {_short(fraction)}, not a number between 0 and 1")
        stats = manifest.get("stats", {})
        if not isinstance(stats, dict):
            raise _corrupt(source, "has 'stats' that is not a JSON object")
        for key, value in stats.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value < 1e15):
                raise _corrupt(source, f"gives stats[{_short(key)}] as {_short(value)}, not a finite number of at least 0")
        specials = tokenizer.get("special", {})
        if not isinstance(specials, dict):
            raise _corrupt(source, "has tokenizer.special that is not a JSON object")
        for key, value in specials.items():
            _whole(value, f"tokenizer.special[{_short(key)}]", source, maximum=self.vocab_size - 1)
        self._check_tokenizer(source)
        splits = _object(_field(manifest, "splits", "the splits", source), "'splits'", source)
        self.train = TokenSplit(self.directory, "train", _field(splits, "train", "the train split", source),
                                self.dtype, self.vocab_size, source)
        self.val = TokenSplit(self.directory, "val", _field(splits, "val", "the val split", source),
                              self.dtype, self.vocab_size, source)

    def _check_tokenizer(self, source: Path) -> None:
        """The tokenizer beside the shards is the one they were made with (a swap would train on garbage)."""
        path = self.tokenizer_path
        if not path.is_file():
            raise Gpt1Error(f"{self.directory} lacks its tokenizer {path.name} (named in {source.name}): "
                            "restore it or re-run `gpt1 tokenize`")
        try:
            actual = file_hash(path)
        except OSError as exc:
            raise Gpt1Error(f"cannot read the tokenizer {path}: {exc.strerror or exc}") from None
        if actual != self.tokenizer_hash:
            raise Gpt1Error(f"the tokenizer {path} is not the one these shards were made with (its BLAKE2b differs "
                            f"from {source.name}'s): restore it or re-run `gpt1 tokenize`")
        vocab = load_tokenizer(path).vocab_size
        if vocab != self.vocab_size:
            raise _corrupt(source, f"gives a vocabulary of {self.vocab_size}; its tokenizer {path.name} has {vocab}")

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
