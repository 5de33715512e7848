"""Encoding a corpus as a stream: text batches in, flat token arrays out, with reading overlapped.

The tokenizer encodes one batch on a worker thread (SentencePiece releases the GIL and uses its
own threads) while the calling thread reads the next batch and handles the previous one's
tokens, so reading, encoding and writing proceed at the same time.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..checks import check_number
from ..errors import Gpt1Error
from .corpus import TextBatch, iter_text_batches

LOOKAHEAD = 2  # batches handed to the encoder ahead of the one being consumed


@dataclass
class EncodedBatch:
    """The tokens of a :class:`TextBatch`: each ended document's tokens followed by ``</s>``."""

    text: TextBatch
    tokens: np.ndarray  # flat, of the dtype asked for
    doc_ends: np.ndarray  # token offsets just past each ended document's </s>
    piece_tokens: np.ndarray  # tokens of each text piece (</s> not included)
    seconds: float  # time the encoder spent on this batch


class EncodeTimer:
    """Seconds spent inside the tokenizer, summed over batches."""

    def __init__(self):
        self.seconds = 0.0


def _flatten(text: TextBatch, encoded: list, eos_id: int, dtype: np.dtype, seconds: float) -> EncodedBatch:
    counts = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    if not encoded:
        flat = np.empty(0, dtype=dtype)
    elif isinstance(encoded[0], np.ndarray):
        flat = np.concatenate(encoded).astype(dtype, copy=False)
    else:
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=int(counts.sum()))
    ends = np.asarray(text.ends, dtype=np.int64)
    if len(ends):
        at = np.concatenate([[0], np.cumsum(counts)])[ends]  # where each ended document's tokens stop
        flat = np.insert(flat, at, np.asarray(eos_id, dtype=dtype))
        doc_ends = at + np.arange(1, len(ends) + 1)
    else:
        doc_ends = ends
    return EncodedBatch(text, flat, doc_ends, counts, seconds)


def encode_batches(batches: Iterable[TextBatch], tokenizer, dtype, *, num_threads: int = 0,
                   timer: EncodeTimer | None = None) -> Iterator[EncodedBatch]:
    """Encode each batch on a worker thread while the caller reads ahead; yield them in order."""
    dtype = np.dtype(dtype)
    eos_id = tokenizer.eos_id

    # Arrays where the tokenizer offers them: a Python int per token costs as much as encoding it.
    encode_texts = getattr(tokenizer, "encode_arrays", None) or tokenizer.encode_batch

    def encode(batch: TextBatch) -> tuple[list, float]:
        start = time.perf_counter()
        encoded = encode_texts(batch.texts, num_threads=num_threads) if batch.texts else []
        return encoded, time.perf_counter() - start

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpt1-encode")
    queued: deque = deque()
    try:
        source = iter(batches)
        while True:
            while len(queued) < LOOKAHEAD:
                batch = next(source, None)  # reading: overlaps the encoding of the queued batches
                if batch is None:
                    break
                queued.append((batch, pool.submit(encode, batch)))
            if not queued:
                return
            batch, future = queued.popleft()
            encoded, seconds = future.result()
            if timer is not None:
                timer.seconds += seconds
            yield _flatten(batch, encoded, eos_id, dtype, seconds)
    finally:
        # An error or an early stop: drop what is queued; a batch being encoded finishes on its own.
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class TokenChunk:
    """Consecutive token ids of a corpus and the UTF-8 bytes of text they stand for."""

    tokens: np.ndarray  # int64
    text_bytes: float  # pro rata within a piece of text when a chunk ends inside one


def _byte_positions(batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (token offset, text bytes consumed) of a batch: the origin, then the end of each piece.

    A document's ``</s>`` counts with its last piece (one ending before the batch's first piece:
    with none), so the bytes consumed grow linearly within each piece's tokens.
    """
    ends = np.asarray(batch.text.ends, dtype=np.int64)
    eos_upto = np.searchsorted(ends, np.arange(len(batch.piece_tokens) + 1), side="right")
    token_at = np.concatenate([[0], np.cumsum(batch.piece_tokens)]) + eos_upto
    byte_at = np.concatenate([[0], np.cumsum(np.asarray(batch.text.sizes, dtype=np.int64))])
    return np.concatenate([[0], token_at]), np.concatenate([[0], byte_at]).astype(np.float64)


def _bytes_at(position: int, token_at: np.ndarray, byte_at: np.ndarray) -> float:
    if position <= 0:
        return 0.0
    j = int(np.searchsorted(token_at, position, side="right")) - 1
    if j >= len(token_at) - 1:
        return float(byte_at[-1])
    span = token_at[j + 1] - token_at[j]
    return float(byte_at[j] + (byte_at[j + 1] - byte_at[j]) * (position - token_at[j]) / span)


def _whole(value, name: str, **bounds) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise Gpt1Error(f"{name} must be a whole number, not {value!r}")
    check_number(int(value), name, **bounds)


def iter_token_chunks(
    paths: list[Path],
    tokenizer,
    *,
    errors: str = "strict",
    max_tokens: int | None = None,
    chunk_tokens: int = 1 << 16,
    num_threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[TokenChunk]:
    """Stream text corpus files (see :func:`~gpt1cli.data.corpus.expand_inputs`) as token ids.

    Documents are encoded as ``gpt1 tokenize`` does (each followed by ``</s>``) and yielded in
    chunks of exactly ``chunk_tokens`` ids (the last may be shorter), never more than
    ``max_tokens`` in all; memory stays bounded whatever the size of a file or a document.
    ``progress(tokens, input_bytes)`` is called after each encoded batch with the running totals.
    """
    _whole(chunk_tokens, "chunk_tokens", minimum=1)
    if max_tokens is not None:
        _whole(max_tokens, "max_tokens", minimum=0)
        if max_tokens == 0:
            return
    parts: list[np.ndarray] = []
    held, held_bytes = 0, 0.0
    emitted, input_bytes = 0, 0
    batches = encode_batches(iter_text_batches(paths, errors), tokenizer, np.int64, num_threads=num_threads)
    try:
        for batch in batches:
            input_bytes += batch.text.input_bytes
            tokens = batch.tokens
            if max_tokens is not None:
                tokens = tokens[: max_tokens - emitted - held]
            token_at, byte_at = _byte_positions(batch)
            start = 0
            while start < len(tokens):
                take = min(chunk_tokens - held, len(tokens) - start)
                parts.append(tokens[start : start + take])
                held_bytes += _bytes_at(start + take, token_at, byte_at) - _bytes_at(start, token_at, byte_at)
                held += take
                start += take
                if held == chunk_tokens:
                    emitted += held
                    yield TokenChunk(np.concatenate(parts), held_bytes)
                    parts, held, held_bytes = [], 0, 0.0
            if progress is not None:
                progress(emitted + held, input_bytes)
            if max_tokens is not None and emitted + held >= max_tokens:
                break
    finally:
        batches.close()
    if held:
        yield TokenChunk(np.concatenate(parts), held_bytes)
