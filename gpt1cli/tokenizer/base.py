"""What every tokenizer offers the rest of the toolkit.

Each kind (:mod:`.sentencepiece_bpe`, :mod:`.openai_bpe`) subclasses :class:`Tokenizer`;
:func:`gpt1cli.tokenizer.load_tokenizer` opens whichever kind a file holds.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

from ..fileio import atomic_write_bytes, bytes_hash, file_hash


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


class JsonTokenizer(Tokenizer):
    """A tokenizer kept as one JSON file: :meth:`record` is its content; ``path`` the file it was
    read from (None when built in memory), whose bytes :meth:`save` copies and :meth:`hash` digests."""

    path: Path | None = None
    _bytes: bytes | None = None

    @abstractmethod
    def record(self) -> dict:
        """The JSON object of the single-file form."""

    def to_bytes(self) -> bytes:
        """The canonical single-file form (what :meth:`save` writes for a tokenizer built in memory)."""
        if self._bytes is None:
            self._bytes = (json.dumps(self.record(), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        return self._bytes

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as one self-contained ``.json`` file, atomically; saving onto its own
        file does nothing."""
        path = Path(path)
        if self.path is not None and path.exists() and path.resolve() == self.path.resolve():
            return path
        atomic_write_bytes(path, self.path.read_bytes() if self.path is not None else self.to_bytes())
        return path

    def hash(self) -> str:
        """BLAKE2b of the single-file form (equal to ``file_hash`` of what :meth:`save` writes)."""
        return file_hash(self.path) if self.path is not None else bytes_hash(self.to_bytes())
