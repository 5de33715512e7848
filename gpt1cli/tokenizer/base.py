"""What every tokenizer offers the rest of the toolkit.

Each kind (:mod:`.sentencepiece_bpe`, :mod:`.openai_bpe`) subclasses :class:`Tokenizer`;
:func:`gpt1cli.tokenizer.load_tokenizer` opens whichever kind a file holds.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

from ..fileio import atomic_write_bytes


def _special_id(name: str) -> property:
    return property(lambda self: self.specials[name], doc=f"The id of the {name!r} special token.")


@runtime_checkable
class Tokenizer(Protocol):
    """The tokenizer interface every command relies on.

    ``specials`` maps pad, eos (end of a document or of a generated completion), start, delim and
    extract (the fine-tuning transforms' control tokens) to ids; encoding text never produces
    them. ``save`` writes one self-contained file ending in ``file_suffix``. A kind subclasses this
    class to inherit the ``*_id`` properties, read from its ``specials``.
    """

    kind: str
    file_suffix: str
    specials: dict[str, int]

    pad_id = _special_id("pad")
    eos_id = _special_id("eos")
    start_id = _special_id("start")
    delim_id = _special_id("delim")
    extract_id = _special_id("extract")

    # Abstract, so that a kind subclassing this interface cannot be built while it lacks one.
    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def encode_batch(self, texts: list[str], num_threads: int = 0) -> list[list[int]]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def hash(self) -> str: ...

    @abstractmethod
    def save(self, path: str | Path) -> Path: ...


def tokenizer_filename(tokenizer: Tokenizer) -> str:
    """The name a tokenizer is stored under beside shards and in checkpoints."""
    return "tokenizer" + tokenizer.file_suffix


def save_single_file(tokenizer, path: str | Path) -> Path:
    """Write a one-file tokenizer to ``path`` atomically: the bytes of the file it was read from
    (``tokenizer.path``), else its ``to_bytes()``; saving onto its own file does nothing."""
    path = Path(path)
    source = tokenizer.path
    if source is not None and path.exists() and path.resolve() == source.resolve():
        return path
    atomic_write_bytes(path, source.read_bytes() if source is not None else tokenizer.to_bytes())
    return path
