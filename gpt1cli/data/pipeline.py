"""`gpt1 tokenize`: corpus files -> SentencePiece BPE model -> Arrow token shards + manifest."""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import Gpt1Error
from ..fileio import atomic_path, atomic_write_json, file_hash
from ..progress import progress_bar
from .corpus import expand_inputs, iter_documents, split_long_line
from .shards import FORMAT, FORMAT_VERSION, MANIFEST, TOKENIZER_FILE, ShardWriter, token_dtype
from .tokenizer import MAX_SENTENCE_BYTES, load_tokenizer, tokenizer_filename, train_sentencepiece

ENCODE_BATCH_LINES = 4096
JOURNAL = ".tokenize-journal.json"


class Journal:
    """Progress of an unfinished ``tokenize`` run, so a re-run continues by shard, not from scratch.

    Written (atomically) at the document boundary after each shard is flushed: the documents
    consumed, each split's shards and counters, and its not-yet-written tokens (``.npy``).
    """

    def __init__(self, out_dir: Path, fingerprint: dict):
        self.out_dir, self.fingerprint = out_dir, fingerprint
        self.path = out_dir / JOURNAL

    def _pending_path(self, split: str) -> Path:
        return self.out_dir / f".tokenize-pending-{split}.npy"

    def save(self, documents: int, writers: dict) -> None:
        for split, writer in writers.items():
            with atomic_path(self._pending_path(split)) as tmp, open(tmp, "wb") as handle:
                np.save(handle, writer.pending())
        atomic_write_json(self.path, {"fingerprint": self.fingerprint, "documents": documents,
                                      "splits": {k: w.summary() for k, w in writers.items()}})

    def load(self, writers: dict) -> int:
        """Restore ``writers`` from a matching journal; the number of documents done (0 if none)."""
        if not self.path.is_file():
            return 0
        try:
            state = json.loads(self.path.read_text())
            if state["fingerprint"] != self.fingerprint:
                return 0
            for split, writer in writers.items():
                summary = state["splits"][split]
                for shard in summary["shards"]:
                    if (self.out_dir / shard["file"]).stat().st_size != shard["bytes"]:
                        return 0
                writer.restore(summary, np.load(self._pending_path(split)))
            return int(state["documents"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0  # an unreadable journal: start over

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        for split in ("train", "val"):
            self._pending_path(split).unlink(missing_ok=True)


def _fingerprint(paths: list[Path], tokenizer_hash: str, **options) -> dict:
    files = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    return {"files": files, "tokenizer": tokenizer_hash, **options}


def _training_sentences(paths: list[Path], errors: str) -> Iterator[str]:
    for document in iter_documents(paths, errors):
        for line in document.lines:
            yield from split_long_line(line, MAX_SENTENCE_BYTES)


def _document_batches(paths: list[Path], errors: str, max_lines: int):
    """Group documents so each batch holds about ``max_lines`` lines, for threaded encoding."""
    batch, lines = [], 0
    for document in iter_documents(paths, errors):
        batch.append(document)
        lines += len(document.lines)
        if lines >= max_lines:
            yield batch
            batch, lines = [], 0
    if batch:
        yield batch


def tokenize_corpus(
    inputs: list[str],
    out_dir: str | Path,
    *,
    vocab_size: int = 8000,
    tokenizer: str | Path | None = None,
    tokens_per_shard: int = 1 << 24,
    val_fraction: float = 0.005,
    seed: int = 0,
    errors: str = "strict",
    num_threads: int = 0,
    max_train_sentences: int = 1_000_000,
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict:
    """Train (or reuse) a tokenizer, encode ``inputs`` into shards in ``out_dir``; return the manifest."""
    started = time.perf_counter()
    if not 0.0 < val_fraction < 1.0:
        raise Gpt1Error(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if tokens_per_shard <= 0:
        raise Gpt1Error(f"--tokens-per-shard must be positive, got {tokens_per_shard}")
    paths = expand_inputs(inputs)
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST).exists() and not overwrite:
        raise Gpt1Error(f"{out_dir} already holds shards; pass --overwrite to replace them or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Gpt1Error(f"cannot create {out_dir}: {exc.strerror}") from None
    # The manifest marks a finished directory: remove it first so a failed re-run cannot look complete.
    if (out_dir / MANIFEST).exists():  # --overwrite: nothing of the old run may linger
        (out_dir / MANIFEST).unlink()
        for stale in [*out_dir.glob("train_*.arrow"), *out_dir.glob("val_*.arrow")]:
            stale.unlink()
    threads = num_threads or os.cpu_count() or 1

    journal_state = out_dir / JOURNAL
    if tokenizer is None and journal_state.is_file() and (out_dir / TOKENIZER_FILE).is_file():
        tokenizer = out_dir / TOKENIZER_FILE  # an interrupted run trained it already; the journal's fingerprint decides
    if tokenizer is None:
        tokenizer_path = out_dir / TOKENIZER_FILE
        with progress_bar("training tokenizer", None, enabled=show_progress):
            tok = train_sentencepiece(
                _training_sentences(paths, errors), tokenizer_path, vocab_size,
                max_sentences=max_train_sentences, num_threads=threads,
            )
    else:
        source = load_tokenizer(tokenizer)  # validates before anything is written
        tokenizer_path = source.save(out_dir / tokenizer_filename(source))
        tok = load_tokenizer(tokenizer_path)

    dtype = token_dtype(tok.vocab_size)
    writers = {split: ShardWriter(out_dir, split, dtype, tokens_per_shard) for split in ("train", "val")}
    rng = np.random.default_rng(seed)
    journal = Journal(out_dir, _fingerprint(paths, file_hash(tokenizer_path), vocab_size=vocab_size,
                                            tokens_per_shard=tokens_per_shard, val_fraction=val_fraction,
                                            seed=seed, errors=errors))
    skip = journal.load(writers)
    rng.random(skip)  # the split draws of the documents already done
    done = 0
    total_bytes = sum(p.stat().st_size for p in paths)
    encode_seconds = 0.0
    with progress_bar("encoding", total_bytes, enabled=show_progress) as bar:
        for batch in _document_batches(paths, errors, ENCODE_BATCH_LINES):
            if done + len(batch) <= skip:
                done += len(batch)
                bar.advance(sum(d.n_bytes for d in batch))
                continue
            batch = batch[max(0, skip - done):]
            done = max(done, skip)
            lines = [line for document in batch for line in document.lines]
            t0 = time.perf_counter()
            encoded = tok.encode_batch(lines, num_threads=threads)
            encode_seconds += time.perf_counter() - t0
            position = 0
            for document in batch:
                pieces = encoded[position : position + len(document.lines)]
                position += len(document.lines)
                tokens = [t for piece in pieces for t in piece]
                tokens.append(tok.eos_id)
                split = "val" if rng.random() < val_fraction else "train"
                flushed = len(writers[split].shards)
                writers[split].add_document(tokens, document.n_bytes)
                done += 1
                if len(writers[split].shards) != flushed:
                    journal.save(done, writers)
            bar.advance(sum(d.n_bytes for d in batch))

    train, val = writers["train"], writers["val"]
    if train.documents + val.documents == 0 or train.tokens + val.tokens == 0:
        raise Gpt1Error(f"the corpus is empty: {len(paths)} file(s) hold no text")
    if val.tokens == 0:
        # Too few documents for the sampled split: hold out the end of the training stream.
        held = max(2, int(train.tokens * val_fraction))
        tail = train.take_tail(held)
        moved_bytes = int(train.text_bytes * len(tail) / max(train.tokens + len(tail), 1))
        train.text_bytes -= moved_bytes
        val.add_document(tail, moved_bytes)
        val.documents = 0
    if train.tokens == 0:
        raise Gpt1Error("the corpus is too small to leave any training tokens after the validation split")
    train.close()
    val.close()

    encoded_bytes = train.text_bytes + val.text_bytes
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": {
            "file": tokenizer_path.name,
            "kind": tok.kind,
            "blake2b": file_hash(tokenizer_path),
            "vocab_size": tok.vocab_size,
            "special": tok.specials,
        },
        "dtype": dtype.name,
        "tokens_per_shard": tokens_per_shard,
        "val_fraction": val_fraction,
        "seed": seed,
        "inputs": [str(p) for p in paths],
        "splits": {"train": train.summary(), "val": val.summary()},
        "stats": {
            "seconds": round(time.perf_counter() - started, 3),
            "encode_seconds": round(encode_seconds, 3),
            "encode_mb_per_s": round(encoded_bytes / 1e6 / encode_seconds, 3) if encode_seconds else None,
            "threads": threads,
        },
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    journal.clear()
    return manifest
