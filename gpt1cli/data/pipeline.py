"""`gpt1 tokenize`: corpus files -> SentencePiece BPE model -> Arrow token shards + manifest."""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..checks import SEED, check_number
from ..errors import Gpt1Error, Interrupted, interrupt_leaves
from ..fileio import atomic_path, atomic_write_json, file_hash, plain_name, read_json
from ..locking import exclusive_output
from ..progress import progress_bar
from ..settings import check_settings, setting
from ..signals import uninterrupted
from ..tokenizer import load_tokenizer, tokenizer_filename
from ..tokenizer.sentencepiece_bpe import MAX_SENTENCE_BYTES, MAX_VOCAB, check_vocab_size, train_sentencepiece
from .corpus import (TEXT_FIELD, TextBatch, check_columns, check_errors_mode, check_text_field, expand_inputs,
                     iter_text_batches, split_long_line)
from .shards import (FORMAT, FORMAT_VERSION, HEX_DIGEST, MANIFEST, SHARD_NAME, TOKENIZER_FILE, ShardWriter,
                     check_tokens_per_shard, token_dtype)
from .stream import EncodedBatch, EncodeTimer, encode_batches

JOURNAL = ".tokenize-journal.json"
JOURNAL_FORMAT = "gpt1-tokenize-journal"
JOURNAL_VERSION = 2
MAX_THREADS = 1024
MAX_TRAIN_SENTENCES = 2**31 - 1
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
_PENDING = re.compile(r"^\.tokenize-pending-(train|val)-\d{1,18}\.npy\Z")
_MAX_COUNT = 2**63 - 1
# What an interrupted atomic write leaves: a hidden temporary beside one of our files.
_TEMPORARY = re.compile(r"^\.(?:(?:train|val)_\d{5,}\.arrow|manifest\.json|tokenizer\.(?:model|json)"
                        r"|\.tokenize-journal\.json|\.tokenize-pending-(?:train|val)-\d+\.npy)\.[^/]+\.tmp\Z")


def _whole(value, name: str, **bounds) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise Gpt1Error(f"{name} must be a whole number, got {value!r}")
    check_number(int(value), name, **bounds)
    return int(value)


def _rule(check):
    """A setting's rule from a check that names its option itself."""

    def rule(value, name):
        check(value)
        return value

    return rule


def _whole_number(**bounds):
    return lambda value, name: _whole(value, name, **bounds)


def _vocab_limit(value, name):
    """A whole number, not absurdly large, whatever the tokenizer; the lower bound applies to one trained here."""
    if isinstance(value, bool) or not isinstance(value, int) or value > MAX_VOCAB:
        check_vocab_size(value)
    return value


def _fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise Gpt1Error(f"{name} must be between 0 and 1 (exclusive), got {value}")
    return value


@dataclass
class TokenizeConfig:
    """The settings of `gpt1 tokenize` (besides its inputs and output directory)."""

    vocab_size: int = setting(8000, "Vocabulary size of the BPE tokenizer to train.", rule=_vocab_limit)
    tokenizer: str | None = setting(None, "Reuse a tokenizer instead of training one: a SentencePiece .model, an "
                                    "openai-bpe .json, or openai:DIR (the original GPT-1 encoder + merges).")
    tokens_per_shard: int = setting(1 << 24, "Tokens per Arrow shard file (at most 2^31).",
                                    rule=_rule(check_tokens_per_shard))
    val_fraction: float = setting(0.005, "Fraction of documents held out for validation.", rule=_fraction)
    seed: int = setting(0, "Seed of the train/validation split.", rule=_whole_number(**SEED))
    errors: str = setting("strict", "Invalid UTF-8: 'strict' stops with the file and byte offset, 'replace' "
                          "substitutes U+FFFD.", rule=_rule(check_errors_mode))
    text_field: str = setting(TEXT_FIELD, "The field (.jsonl) or column (.parquet, .arrow, .tsv, .csv, datasets folders) "
                              "that holds each record's text; .txt files have none.", rule=_rule(check_text_field))
    num_threads: int = setting(0, "Encoding threads (0: all cores).", flags=("--threads",),
                               rule=_whole_number(minimum=0, maximum=MAX_THREADS))
    max_train_sentences: int = setting(1_000_000, "Lines sampled to train the tokenizer (the trainer holds them in "
                                       "memory: about 1.1 GB peak at the default).",
                                       rule=_whole_number(minimum=1, maximum=MAX_TRAIN_SENTENCES))
    overwrite: bool = setting(False, "Replace shards already in --out, or an unfinished run of other inputs or settings.")

    def check(self) -> "TokenizeConfig":
        """Every setting, before anything is read, trained or allocated."""
        check_settings(self)
        if self.tokenizer is None:
            check_vocab_size(self.vocab_size)
        return self


# ---------------------------------------------------------------------------------------------
# The journal of an unfinished run


class JournalError(Exception):
    """The journal in --out cannot be resumed from; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Journal:
    """Progress of an unfinished ``tokenize`` run, so a re-run continues by shard, not from scratch.

    Written (atomically) at a document boundary after a shard is flushed, and once before encoding
    starts: the run's inputs and settings, the tokenizer, the documents consumed, each split's
    shards and counters. Each save puts the not-yet-written tokens in new ``.npy`` files that the
    journal names, so a crash between two writes never pairs a journal with the wrong tokens.
    """

    def __init__(self, out_dir: Path, settings: dict):
        self.out_dir, self.settings = out_dir, settings
        self.path = out_dir / JOURNAL
        self.tokenizer: dict = {}
        self.pending: dict = {}  # split -> the .npy file the journal names
        self.saves = 0
        self.documents = 0
        self.shards = 0

    def save(self, documents: int, writers: dict) -> None:
        with uninterrupted():  # an interrupt is acted on after the save, at a document boundary
            self._save(documents, writers)

    def _save(self, documents: int, writers: dict) -> None:
        self.saves += 1
        pending = {}
        for split, writer in writers.items():
            name = f".tokenize-pending-{split}-{self.saves}.npy"
            with atomic_path(self.out_dir / name) as tmp, open(tmp, "wb") as handle:
                np.save(handle, writer.pending())
            pending[split] = name
        atomic_write_json(self.path, {
            "format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "settings": self.settings,
            "tokenizer": self.tokenizer, "saves": self.saves, "documents": documents,
            "splits": {k: w.summary() for k, w in writers.items()}, "pending": pending,
        })
        self.documents, self.shards = documents, sum(len(w.shards) for w in writers.values())
        for stale in self.pending.values():
            (self.out_dir / stale).unlink(missing_ok=True)
        self.pending = pending

    def read(self) -> dict | None:
        """The recorded state (checked later by :meth:`restore`), or None without a journal."""
        if not self.path.is_file():
            return None
        try:
            state = read_json(self.path, "tokenize journal")
        except Gpt1Error as exc:
            raise JournalError(str(exc)) from None
        if state.get("format") != JOURNAL_FORMAT or state.get("version") != JOURNAL_VERSION:
            raise JournalError(f"{self.path} was written by another version of gpt1 and cannot be resumed")
        return state

    def restore(self, state: dict, writers: dict, tokens_per_shard: int) -> int:
        """Put ``writers`` back where the journal left them; the number of documents done."""
        try:
            self.saves = _whole(state.get("saves"), "saves", minimum=0, maximum=10**17)
            documents = _whole(state.get("documents"), "documents", minimum=0, maximum=_MAX_COUNT)
            splits, pending = state.get("splits"), state.get("pending")
            if not isinstance(splits, dict) or not isinstance(pending, dict):
                raise Gpt1Error("the splits are missing")
            for split, writer in writers.items():
                summary = self._summary(splits.get(split), split, tokens_per_shard)
                name = pending.get(split)
                # Hidden, so plain_name would refuse it: only the exact pattern we write is accepted.
                if not isinstance(name, str) or not _PENDING.match(name) or not name.startswith(f".tokenize-pending-{split}-"):
                    raise Gpt1Error(f"it names the pending {split} tokens {name!r}")
                tokens = self._pending(self.out_dir / name, writer.dtype, tokens_per_shard)
                if summary["tokens"] != sum(s["tokens"] for s in summary["shards"]) + len(tokens):
                    raise Gpt1Error(f"the {split} token counts do not add up")
                writer.restore(summary, tokens)
                self.pending[split] = name
        except Gpt1Error as exc:
            raise JournalError(str(exc)) from None
        self.documents, self.shards = documents, sum(len(w.shards) for w in writers.values())
        return documents

    def _summary(self, summary, split: str, tokens_per_shard: int) -> dict:
        if not isinstance(summary, dict) or not isinstance(summary.get("shards"), list):
            raise Gpt1Error(f"the {split} split is missing")
        shards = []
        for index, shard in enumerate(summary["shards"]):
            if not isinstance(shard, dict):
                raise Gpt1Error(f"{split} shard {index} is not a JSON object")
            name = plain_name(shard.get("file"), f"{split} shard {index}", self.path)
            if name != f"{split}_{index:05d}.arrow":
                raise Gpt1Error(f"{split} shard {index} is named {name!r}")
            size = _whole(shard.get("bytes"), f"the size of {name}", minimum=1, maximum=_MAX_COUNT)
            digest = shard.get("blake2b")
            if not isinstance(digest, str) or not HEX_DIGEST.match(digest):
                raise Gpt1Error(f"the BLAKE2b of {name} is malformed")
            path = self.out_dir / name
            if not path.is_file() or path.stat().st_size != size:
                raise Gpt1Error(f"the shard {name} it recorded is missing or was changed")
            shards.append({"file": name, "tokens": _whole(shard.get("tokens"), f"the tokens of {name}", minimum=1,
                                                          maximum=tokens_per_shard),
                           "bytes": size, "blake2b": digest,
                           "max_token": _whole(shard.get("max_token"), f"the largest token of {name}", minimum=0,
                                               maximum=_MAX_COUNT)})
        return {"tokens": _whole(summary.get("tokens"), f"{split} tokens", minimum=0, maximum=_MAX_COUNT),
                "documents": _whole(summary.get("documents"), f"{split} documents", minimum=0, maximum=_MAX_COUNT),
                "text_bytes": _whole(summary.get("text_bytes"), f"{split} text bytes", minimum=0, maximum=_MAX_COUNT),
                "shards": shards}

    @staticmethod
    def _pending(path: Path, dtype: np.dtype, tokens_per_shard: int) -> np.ndarray:
        try:
            tokens = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise Gpt1Error(f"its pending tokens {path.name} are unreadable ({exc})") from None
        if tokens.ndim != 1 or tokens.dtype != dtype or len(tokens) >= tokens_per_shard:
            raise Gpt1Error(f"its pending tokens {path.name} do not fit the run")
        return tokens

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        for stale in self.out_dir.iterdir():
            if _PENDING.match(stale.name):
                stale.unlink(missing_ok=True)

    def interrupted_state(self) -> str:
        """What a Ctrl-C during encoding leaves, for the one line the CLI prints."""
        where = (f"resume from document {self.documents:,} with {self.shards} shard(s) kept" if self.documents
                 else "resume (the tokenizer is kept; encoding starts from the beginning)")
        return f"no manifest written, {self.out_dir} is not usable yet; run the same command again to {where}"


def _run_settings(paths: list[Path], source, *, vocab_size: int, max_train_sentences: int, tokens_per_shard: int,
                  val_fraction: float, seed: int, errors: str, text_field: str = TEXT_FIELD) -> dict:
    """What a resumed run must share with the interrupted one: inputs as found on disk, and every setting."""
    inputs = []
    for path in paths:
        info = path.stat()
        inputs.append([str(path), info.st_size, info.st_mtime_ns])
    made = ({"given": source.hash()} if source is not None
            else {"vocab_size": vocab_size, "max_train_sentences": max_train_sentences})
    recorded = {"inputs": inputs, "tokenizer": made, "tokens_per_shard": tokens_per_shard,
                "val_fraction": float(val_fraction), "seed": seed, "errors": errors}
    if text_field != TEXT_FIELD:  # recorded only when named, so journals of earlier runs still resume
        recorded["text_field"] = text_field
    return recorded


def _differences(before, now: dict) -> str:
    """How an interrupted run's settings differ from these, in the user's terms."""
    if not isinstance(before, dict):
        return "settings it did not record"
    notes = []
    old_inputs, new_inputs = before.get("inputs"), now["inputs"]
    if old_inputs != new_inputs:
        readable = isinstance(old_inputs, list) and all(isinstance(e, list) and e for e in old_inputs)
        if not readable or [e[0] for e in old_inputs] != [e[0] for e in new_inputs]:
            notes.append("other input files")
        else:
            changed = [os.path.basename(e[0]) for e, old in zip(new_inputs, old_inputs) if e != old]
            more = f" and {len(changed) - 1} more file(s)" if len(changed) > 1 else ""
            notes.append(f"{changed[0]}{more} changed since")
    old_made, new_made = before.get("tokenizer"), now["tokenizer"]
    if old_made != new_made:
        if not isinstance(old_made, dict) or ("given" in old_made) != ("given" in new_made):
            notes.append("it used --tokenizer" if "given" in (old_made or {}) else "it trained its tokenizer")
        elif "given" in new_made:
            notes.append("another --tokenizer")
        else:
            for key, option in (("vocab_size", "--vocab-size"), ("max_train_sentences", "--max-train-sentences")):
                if old_made.get(key) != new_made[key]:
                    notes.append(f"{option} was {old_made.get(key)}")
    for key, option in (("tokens_per_shard", "--tokens-per-shard"), ("val_fraction", "--val-fraction"),
                        ("seed", "--seed"), ("errors", "--errors")):
        if before.get(key) != now[key]:
            notes.append(f"{option} was {before.get(key)}")
    if before.get("text_field", TEXT_FIELD) != now.get("text_field", TEXT_FIELD):
        notes.append(f"--text-field was {before.get('text_field', TEXT_FIELD)}")
    return ", ".join(notes) or "other settings"


# ---------------------------------------------------------------------------------------------
# The output directory


def _clean_temporaries(out_dir: Path) -> None:
    for path in out_dir.iterdir():
        if _TEMPORARY.match(path.name):
            path.unlink(missing_ok=True)


def _shard_files(out_dir: Path) -> list[Path]:
    return [path for path in out_dir.iterdir() if SHARD_NAME.match(path.name)]


def _clear_outputs(out_dir: Path, journal: Journal, keep: Path | None) -> None:
    """Remove every file a previous run wrote (never anything else, never the lock), but not ``keep``."""
    journal.clear()
    for path in _shard_files(out_dir):
        path.unlink()
    for name in TOKENIZER_FILES:
        path = out_dir / name
        if path.is_file() and (keep is None or path.resolve() != keep.resolve()):
            path.unlink()


def _training_sentences(paths: list[Path], errors: str, text_field: str = TEXT_FIELD) -> Iterator[str]:
    for batch in iter_text_batches(paths, errors, text_field=text_field):
        for text in batch.texts:
            if text.strip():
                yield from split_long_line(text, MAX_SENTENCE_BYTES)


# ---------------------------------------------------------------------------------------------
# Encoding


def _skip_documents(batches: Iterable[TextBatch], count: int) -> Iterator[TextBatch]:
    """Drop the first ``count`` documents (done by an interrupted run); skipped batches keep their input bytes."""
    for batch in batches:
        if count == 0:
            yield batch
            continue
        ended = len(batch.ends)
        if count > ended or (count == ended and not batch.open_end):
            count -= ended
            yield TextBatch(input_bytes=batch.input_bytes)
            continue
        cut = batch.ends[count - 1]
        yield TextBatch(batch.texts[cut:], batch.sizes[cut:], [end - cut for end in batch.ends[count:]],
                        batch.doc_bytes[count:], open_start=False, open_end=batch.open_end,
                        input_bytes=batch.input_bytes)
        count = 0


def _distribute(encoded: EncodedBatch, writers: dict, rng: np.random.Generator, val_fraction: float,
                carried: bool | None, unsaved: bool, save) -> tuple[int, bool | None, bool]:
    """Send each document of a batch to train or val (one draw per document, in order).

    ``save(n)`` is called at the first document boundary after a shard is written, ``n`` being
    the documents of this batch done by then. Returns the documents completed, the split of a
    document that continues in the next batch, and whether a shard is written but not yet saved.
    """
    text, tokens = encoded.text, encoded.tokens
    bounds = encoded.doc_ends.tolist()
    ended = len(bounds)
    if text.open_end:
        bounds.append(len(tokens))
    if not bounds:
        return 0, carried, unsaved
    draws = (rng.random(len(bounds) - text.open_start) < val_fraction).tolist()
    labels = np.array([carried, *draws] if text.open_start else draws, dtype=bool)
    lengths = np.diff([0, *bounds])
    # The segments in which a shard fills up: the journal is saved at the end of each.
    points = {0} if unsaved else set()
    for flag, writer in ((False, writers["train"]), (True, writers["val"])):
        filled = np.cumsum(np.where(labels == flag, lengths, 0)) + len(writer.pending())
        every = writer.tokens_per_shard
        points.update(np.searchsorted(filled, np.arange(every, int(filled[-1]) + 1, every)).tolist())
    stops = sorted(point + 1 for point in points if point < ended)
    unsaved = any(point >= ended for point in points)
    doc_bytes = np.asarray(text.doc_bytes, dtype=np.int64)
    start = 0
    for stop in stops if stops and stops[-1] == len(bounds) else [*stops, len(bounds)]:
        if stop > start:
            first, last = (bounds[start - 1] if start else 0), bounds[stop - 1]
            part, kinds = tokens[first:last], labels[start:stop]
            if kinds.all():
                writers["val"].add_tokens(part)
            elif not kinds.any():
                writers["train"].add_tokens(part)
            else:
                mask = np.repeat(kinds, lengths[start:stop])
                writers["train"].add_tokens(part[~mask])
                writers["val"].add_tokens(part[mask])
            closed = labels[start:min(stop, ended)]
            sizes = doc_bytes[start:min(stop, ended)]
            val_docs, val_bytes = int(closed.sum()), int(sizes[closed].sum())
            writers["val"].documents += val_docs
            writers["val"].text_bytes += val_bytes
            writers["train"].documents += len(closed) - val_docs
            writers["train"].text_bytes += int(sizes.sum()) - val_bytes
        if stop in stops:
            save(stop)
        start = stop
    return ended, (bool(labels[-1]) if text.open_end else None), unsaved


def tokenize_corpus(inputs: list[str], out_dir: str | Path, *, show_progress: bool = True, **settings) -> dict:
    """Train (or reuse) a tokenizer, encode ``inputs`` into shards in ``out_dir``; return the manifest.

    ``settings`` are fields of :class:`TokenizeConfig` (the others keep its defaults). An
    interrupted run leaves a journal in ``out_dir``; the same call again resumes it. A call with
    other inputs or settings is refused unless ``overwrite``, which starts over.
    """
    started = time.perf_counter()
    config = TokenizeConfig(**settings).check()
    paths = expand_inputs(inputs)
    check_columns(paths, config.text_field, config.errors)  # a missing column stops the run before any training
    # Loading validates a tokenizer to reuse before anything is written.
    source = load_tokenizer(config.tokenizer) if config.tokenizer is not None else None
    out_dir = Path(out_dir)
    threads = config.num_threads or os.cpu_count() or 1
    run_settings = _run_settings(paths, source, vocab_size=config.vocab_size,
                                 max_train_sentences=config.max_train_sentences, tokens_per_shard=config.tokens_per_shard,
                                 val_fraction=config.val_fraction, seed=config.seed, errors=config.errors,
                                 text_field=config.text_field)
    with exclusive_output(out_dir, "--out directory"):
        journal = Journal(out_dir, run_settings)
        with interrupt_leaves(f"no manifest written, {out_dir} is not usable yet; run the same command again"):
            state = _prepare(out_dir, journal, run_settings, config.overwrite, source)
            skip = None
            if state is not None:
                tokenizer_path = out_dir / journal.tokenizer["file"]
                tok = load_tokenizer(tokenizer_path)
                writers = _writers(out_dir, tok, config.tokens_per_shard)
                try:
                    skip = journal.restore(state, writers, config.tokens_per_shard)
                except JournalError as exc:
                    if not config.overwrite:
                        raise _cannot_resume(out_dir, exc.reason) from None
                    _clear_outputs(out_dir, journal, keep=getattr(source, "path", None))
        if skip is None:
            with interrupt_leaves(f"no manifest written, {out_dir} is not usable yet; "
                                  "run the same command again to start over"):
                if source is None:
                    tokenizer_path = out_dir / TOKENIZER_FILE
                    with progress_bar("training tokenizer", None, enabled=show_progress):
                        sentences = _training_sentences(paths, config.errors, config.text_field)
                        tok = train_sentencepiece(sentences, tokenizer_path, config.vocab_size,
                                                  max_sentences=config.max_train_sentences,
                                                  num_threads=threads)
                else:
                    tokenizer_path = source.save(out_dir / tokenizer_filename(source))
                    tok = load_tokenizer(tokenizer_path)
                writers = _writers(out_dir, tok, config.tokens_per_shard)
                skip = 0
                journal.tokenizer = {"file": tokenizer_path.name, "blake2b": file_hash(tokenizer_path)}
                journal.save(0, writers)  # from here a re-run resumes, reusing the tokenizer
        try:
            splits, stats = _encode(paths, config.errors, tok, writers, journal, skip, seed=config.seed,
                                    val_fraction=config.val_fraction, threads=threads, show_progress=show_progress,
                                    text_field=config.text_field)
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
                "dtype": writers["train"].dtype.name,
                "tokens_per_shard": config.tokens_per_shard,
                "val_fraction": config.val_fraction,
                "seed": config.seed,
                "inputs": [str(p) for p in paths],
                "splits": splits,
                "stats": {"seconds": round(time.perf_counter() - started, 3), **stats, "threads": threads},
            }
            atomic_write_json(out_dir / MANIFEST, manifest)
        except KeyboardInterrupt:
            raise Interrupted(journal.interrupted_state()) from None
        journal.clear()
    return manifest


def _writers(out_dir: Path, tok, tokens_per_shard: int) -> dict:
    dtype = token_dtype(tok.vocab_size)
    return {split: ShardWriter(out_dir, split, dtype, tokens_per_shard) for split in ("train", "val")}


def _cannot_resume(out_dir: Path, reason: str) -> Gpt1Error:
    return Gpt1Error(f"{out_dir} holds an unfinished `gpt1 tokenize` run that cannot be resumed ({reason}); "
                     "pass --overwrite to start over")


def _prepare(out_dir: Path, journal: Journal, settings: dict, overwrite: bool, source) -> dict | None:
    """Make ``out_dir`` ready: the journal state to resume from, or None for a clean start."""
    _clean_temporaries(out_dir)
    finished = (out_dir / MANIFEST).exists()
    if finished:
        if not overwrite:
            raise Gpt1Error(f"{out_dir} already holds shards; pass --overwrite to replace them or choose another --out")
        # The manifest marks a finished directory: remove it first so a failed re-run cannot look complete.
        (out_dir / MANIFEST).unlink()
    try:
        state = journal.read()
    except JournalError as exc:
        if not overwrite:
            raise _cannot_resume(out_dir, exc.reason) from None
        state = None
    if state is not None and not finished:
        if state.get("settings") == settings:
            recorded = state.get("tokenizer")
            try:
                if not isinstance(recorded, dict):
                    raise Gpt1Error("the tokenizer is not recorded")
                name = plain_name(recorded.get("file"), "its tokenizer", journal.path)
                if name not in TOKENIZER_FILES:
                    raise Gpt1Error(f"it names the tokenizer {name!r}")
                if not (out_dir / name).is_file() or file_hash(out_dir / name) != recorded.get("blake2b"):
                    raise Gpt1Error(f"its tokenizer {name} is missing or was changed")
            except Gpt1Error as exc:
                if not overwrite:
                    raise _cannot_resume(out_dir, str(exc)) from None
            else:
                journal.tokenizer = {"file": name, "blake2b": recorded["blake2b"]}
                return state
        elif not overwrite:
            raise Gpt1Error(f"{out_dir} holds an unfinished `gpt1 tokenize` run with other inputs or settings "
                            f"({_differences(state.get('settings'), settings)}): run that command again to resume it, "
                            "or pass --overwrite to start over with these")
    elif state is None and not overwrite and not finished and _shard_files(out_dir):
        raise Gpt1Error(f"{out_dir} holds shard files but no {MANIFEST} and no journal to resume from; "
                        "pass --overwrite to replace them or choose another --out")
    _clear_outputs(out_dir, journal, keep=getattr(source, "path", None))
    return None


def _encode(paths: list[Path], errors: str, tok, writers: dict, journal: Journal, skip: int, *, seed: int,
            val_fraction: float, threads: int, show_progress: bool, text_field: str = TEXT_FIELD) -> tuple[dict, dict]:
    """Encode the corpus into ``writers`` (after the ``skip`` documents done before): the splits and timings."""
    rng = np.random.default_rng(seed)
    rng.random(skip)  # the split draws of the documents already done
    done, carried, unsaved = skip, None, False

    def save(count: int) -> None:
        journal.save(done + count, writers)
    timer = EncodeTimer()
    total_bytes = sum(p.stat().st_size for p in paths)
    batches = _skip_documents(iter_text_batches(paths, errors, text_field=text_field), skip)
    with progress_bar("encoding", total_bytes, enabled=show_progress) as bar:
        for encoded in encode_batches(batches, tok, writers["train"].dtype, num_threads=threads, timer=timer):
            ended, carried, unsaved = _distribute(encoded, writers, rng, val_fraction, carried, unsaved, save)
            done += ended
            bar.advance(encoded.text.input_bytes)

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
    seconds = timer.seconds
    return ({"train": train.summary(), "val": val.summary()},
            {"encode_seconds": round(seconds, 3),
             "encode_mb_per_s": round(encoded_bytes / 1e6 / seconds, 3) if seconds else None})
