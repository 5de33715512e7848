"""Tokenizers: the interface every kind implements (:mod:`.base`), one module per kind
(:mod:`.sentencepiece_bpe`, :mod:`.openai_bpe`, :mod:`.hf_tokenizers`), and :func:`load_tokenizer`,
which opens whichever kind a file or folder holds. :mod:`.to_tokenizers` writes ours as
``tokenizers`` pipelines (a transformers ``tokenizer.json``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import Gpt1Error
from ..fileio import parse_json
from .base import Tokenizer, tokenizer_filename
from .openai_bpe import FORMAT as OPENAI_FORMAT
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


def _load_json(path: Path) -> Tokenizer:
    """A ``.json`` tokenizer: ours of the original GPT-1 BPE, ours around a ``tokenizers`` one, or
    a plain ``tokenizers`` ``tokenizer.json`` (as transformers saves it)."""
    from .hf_tokenizers import FORMAT as HF_FORMAT
    from .hf_tokenizers import HFTokenizer, backend_from_json, is_tokenizers_json

    try:
        with open(path, "rb") as handle:
            head = handle.read(256).decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise Gpt1Error(f"tokenizer not found: {path}") from None
    except OSError as exc:
        raise Gpt1Error(f"cannot read the tokenizer {path}: {exc.strerror or exc}") from None
    if OPENAI_FORMAT in head:  # what OpenAIBPETokenizer.save writes first
        return OpenAIBPETokenizer.load(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise Gpt1Error(f"cannot read the tokenizer {path}: {exc}") from None
    data = parse_json(text, f"tokenizer {path}")
    if isinstance(data, dict) and data.get("format") == HF_FORMAT:
        return HFTokenizer.from_record(data, path)
    if is_tokenizers_json(data):
        return HFTokenizer.from_backend(backend_from_json(text, str(path)))
    return OpenAIBPETokenizer.load(path)  # says what is wrong with the file


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """Load a tokenizer: a SentencePiece ``.model`` file, a ``.json`` file (our form of the original
    GPT-1 BPE, our form of a ``tokenizers`` tokenizer, or a plain ``tokenizers`` ``tokenizer.json``),
    or ``openai:DIR`` (the original release's encoder and merges files)."""
    text = str(spec)
    if text.startswith(OPENAI_PREFIX):
        return OpenAIBPETokenizer.from_release_dir(text[len(OPENAI_PREFIX):])
    _check_not_special(Path(text))
    if Path(text).suffix.lower() == ".json":
        return _load_json(Path(text))
    return SentencePieceTokenizer(spec)
