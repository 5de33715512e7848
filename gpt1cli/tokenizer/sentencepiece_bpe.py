"""The SentencePiece BPE tokenizer, and training one, with the special tokens the fine-tuning transforms need.

Reserved ids: 0 ``<pad>``, 1 ``<unk>``, 2 ``</s>`` (end of document / end of a generated
completion), then the control symbols 3 ``<start>``, 4 ``<delim>``, 5 ``<extract>``. Control
symbols never come out of encoding text: only code places them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import Gpt1Error
from ..fileio import atomic_write_bytes, file_hash
from .base import Tokenizer

PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
START, DELIM, EXTRACT = "<start>", "<delim>", "<extract>"
CONTROL_SYMBOLS = (START, DELIM, EXTRACT)
# SentencePiece skips training sentences longer than this (bytes); the corpus reader splits them.
MAX_SENTENCE_BYTES = 4192
MIN_VOCAB = 256 + 6 + 2  # byte fallback pieces + reserved ids + room for merges
MAX_VOCAB = 1 << 22  # far beyond any real tokenizer; a larger number is a mistake, not a request


def check_vocab_size(vocab_size) -> int:
    """``--vocab-size`` of a tokenizer to train: a whole number from MIN_VOCAB to MAX_VOCAB."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise Gpt1Error(f"--vocab-size must be a whole number, got {vocab_size!r}")
    if vocab_size < MIN_VOCAB:
        raise Gpt1Error(f"--vocab-size {vocab_size} is too small: it must hold 256 byte pieces and 6 special tokens (use >= {MIN_VOCAB})")
    if vocab_size > MAX_VOCAB:
        raise Gpt1Error(f"--vocab-size {vocab_size} is too large (use <= {MAX_VOCAB:,})")
    return vocab_size


class SentencePieceTokenizer(Tokenizer):
    """A trained SentencePiece model, loaded from its ``.model`` file."""

    kind = "sentencepiece"
    file_suffix = ".model"

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise Gpt1Error(f"tokenizer not found: {self.path}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError):
            raise Gpt1Error(f"{self.path} is not a SentencePiece model (corrupt or another format)") from None
        self._numpy_output: bool | None = None
        self.specials = {}
        for name, piece in (("pad", PAD), ("eos", EOS), ("start", START), ("delim", DELIM), ("extract", EXTRACT)):
            token = self._sp.PieceToId(piece)
            if self._sp.IdToPiece(token) != piece:
                raise Gpt1Error(f"tokenizer {self.path} lacks the special token {piece}: train it with `gpt1 tokenize`")
            self.specials[name] = token

    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    def hash(self) -> str:
        return file_hash(self.path)

    def save(self, path: str | Path) -> Path:
        """Copy the model file to ``path`` atomically (no-op when it is already there)."""
        path = Path(path)
        if path.resolve() != self.path.resolve():
            atomic_write_bytes(path, self.path.read_bytes())
        return path

    def encode(self, text: str) -> list[int]:
        return self._sp.Encode(text)

    def encode_batch(self, texts: list[str], num_threads: int = 0) -> list[list[int]]:
        """Encode many texts at once on ``num_threads`` threads (0: all cores)."""
        return self._sp.Encode(texts, num_threads=num_threads)

    def encode_arrays(self, texts: list[str], num_threads: int = 0) -> list:
        """:meth:`encode_batch` as int32 numpy arrays, without a Python int per token where SentencePiece can."""
        import numpy as np

        if self._numpy_output is None:
            try:  # sentencepiece >= 0.2.1 returns numpy buffers; older ones only lists
                self._numpy_output = len(self._sp.encode(["a"], out_type="numpy")) == 1
            except Exception:  # noqa: BLE001 - any failure means: not supported
                self._numpy_output = False
        if self._numpy_output:
            return self._sp.encode(texts, num_threads=num_threads, out_type="numpy")
        return [np.asarray(ids, dtype=np.int32) for ids in self._sp.Encode(texts, num_threads=num_threads)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.Decode([int(i) for i in ids])


def train_sentencepiece(
    sentences: Iterator[str],
    out_path: str | Path,
    vocab_size: int = 8000,
    *,
    max_sentences: int = 1_000_000,
    num_threads: int = 0,
) -> SentencePieceTokenizer:
    """Train a BPE model on ``sentences`` and write it atomically to ``out_path``.

    At most ``max_sentences`` are sampled (SentencePiece keeps its sample in memory).
    """
    import sentencepiece as spm

    check_vocab_size(vocab_size)
    for value, name, low in ((max_sentences, "--max-train-sentences", 1), (num_threads, "--threads", 0)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**31:
            raise Gpt1Error(f"{name} must be a whole number from {low} to {2**31 - 1}, got {value!r}")
    seen = 0
    failure: BaseException | None = None

    def counted():
        # SentencePiece turns an exception raised in here into a RuntimeError without our message
        # (and stops at once: Ctrl-C or bad input does not wait for training on a partial sample):
        # keep it and raise it ourselves.
        nonlocal seen, failure
        try:
            for sentence in sentences:
                seen += 1
                yield sentence
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failure = exc
            raise

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.Train(
            sentence_iterator=counted(),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            pad_id=0, pad_piece=PAD,
            unk_id=1, unk_piece=UNK,
            bos_id=-1,
            eos_id=2, eos_piece=EOS,
            control_symbols=list(CONTROL_SYMBOLS),
            byte_fallback=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            max_sentence_length=MAX_SENTENCE_BYTES,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        if failure is not None:
            raise failure from None
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "training failed"
        message = message.split("] ", 1)[-1]  # drop SentencePiece's source location
        if seen == 0:
            raise Gpt1Error("the corpus is empty: no text to train a tokenizer on") from None
        if "required_chars" in message:
            raise Gpt1Error(f"--vocab-size {vocab_size} is smaller than the corpus's characters need ({message}); use a larger value") from None
        if "Vocabulary size" in message or "vocab_size" in message:
            raise Gpt1Error(f"--vocab-size {vocab_size} does not fit this corpus ({message}); try a smaller value") from None
        raise Gpt1Error(f"SentencePiece training failed: {message}") from None
    if failure is not None:
        raise failure
    atomic_write_bytes(out_path, model.getvalue())
    return SentencePieceTokenizer(out_path)
