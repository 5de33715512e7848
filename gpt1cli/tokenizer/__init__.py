"""Tokenizers: the interface every kind implements (:mod:`.base`), one module per kind
(:mod:`.sentencepiece_bpe`, :mod:`.openai_bpe`), and :func:`load_tokenizer`, which opens
whichever kind a file or folder holds."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import Gpt1Error
from .base import Tokenizer, tokenizer_filename
from .openai_bpe import OpenAIBPETokenizer
from .sentencepiece_bpe import SentencePieceTokenizer

__all__ = ["OPENAI_PREFIX", "Tokenizer", "load_tokenizer", "tokenizer_filename"]

OPENAI_PREFIX = "openai:"


def _check_not_special(path: Path) -> None:
    """A device or FIFO named as a tokenizer is refused by what it is (reading a FIFO would block)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the loaders say so
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise Gpt1Error(f"tokenizer {path} is {kind}: name a .model or .json file, or openai:DIR for a release folder")


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """Load a tokenizer: a SentencePiece ``.model`` file, our single-file ``.json`` form of the
    original GPT-1 BPE, or ``openai:DIR`` (the original release's encoder and merges files)."""
    text = str(spec)
    if text.startswith(OPENAI_PREFIX):
        return OpenAIBPETokenizer.from_release_dir(text[len(OPENAI_PREFIX):])
    _check_not_special(Path(text))
    if Path(text).suffix.lower() == ".json":
        return OpenAIBPETokenizer.load(text)
    return SentencePieceTokenizer(spec)
