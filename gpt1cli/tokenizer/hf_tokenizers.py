"""A tokenizer held by Hugging Face's ``tokenizers`` library (GPT-2's byte-level BPE, or any
``tokenizer.json``), with this toolkit's special tokens.

``tokenizers`` is an optional dependency (the ``hf`` extra): it is imported when a tokenizer of
this kind is opened, and its absence is one clear error.

Our five special tokens (pad, eos, start, delim, extract) must each have an id. A tokenizer read
from a transformers folder brings its end-of-text token (GPT-2's ``<|endoftext|>``) as eos and its
pad token when it has one of its own; the others are appended as added special tokens
(:data:`ADDED_NAMES`), after the vocabulary. Encoding text never produces special tokens (the
backend's ``encode_special_tokens`` is on, so ``<|endoftext|>`` written in text is encoded as
text); decoding drops them.

The run stores the tokenizer as one file, ``tokenizer.json``: a small record of ours (format,
version, the special-token ids) around the ``tokenizers`` JSON (the library refuses keys it does
not know, so the ids cannot sit inside it). :meth:`HFTokenizer.tokenizers_json` gives the plain
``tokenizers`` JSON for an export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..errors import Gpt1Error
from ..fileio import read_text
from .base import JsonTokenizer

FORMAT = "gpt1-hf-tokenizer"
FORMAT_VERSION = 1
SPECIAL_NAMES = ("pad", "eos", "start", "delim", "extract")
# The tokens appended for specials a source tokenizer lacks.
ADDED_NAMES = {"pad": "<|pad|>", "eos": "<|endoftext|>", "start": "<|start|>", "delim": "<|delim|>",
               "extract": "<|extract|>"}
# End-of-text tokens recognised in a tokenizer that does not name its own.
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>")


def require_tokenizers(what: str):
    """The ``tokenizers`` module, or one clear error saying ``what`` needs it."""
    try:
        import tokenizers
    except ImportError:
        raise Gpt1Error(f"{what} needs the tokenizers package: pip install tokenizers "
                        "(or pip install 'gpt1[hf]')") from None
    return tokenizers


def backend_from_json(text: str, source: str):
    """A ``tokenizers.Tokenizer`` from its JSON text; a malformed one is one clear error."""
    tokenizers = require_tokenizers(f"reading {source}")
    try:
        return tokenizers.Tokenizer.from_str(text)
    except Exception as exc:  # noqa: BLE001 - the library raises plain Exception for any malformed file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Gpt1Error(f"{source} is not a tokenizers tokenizer.json the tokenizers library can read ({first}): "
                        "it is corrupt or from another tool") from None


def is_tokenizers_json(data) -> bool:
    """Whether parsed JSON looks like a ``tokenizers`` file (a ``model`` with a vocabulary)."""
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and "vocab" in data["model"]


class HFTokenizer(JsonTokenizer):
    """A ``tokenizers.Tokenizer`` with this toolkit's tokenizer interface (see :mod:`gpt1cli.tokenizer.base`)."""

    kind = "hf-tokenizers"
    file_suffix = ".json"

    def __init__(self, backend, specials: dict[str, int], *, path: str | Path | None = None):
        self._backend = backend
        self.path = None if path is None else Path(path)
        size = backend.get_vocab_size(with_added_tokens=True)
        if sorted(specials) != sorted(SPECIAL_NAMES):
            raise Gpt1Error(f"special tokens {sorted(specials)} differ from {sorted(SPECIAL_NAMES)}")
        for name, index in specials.items():
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
                raise Gpt1Error(f"special token {name} has id {index!r}, outside the vocabulary of {size}")
        self.specials = dict(specials)
        backend.encode_special_tokens = True  # text never turns into special tokens
        self._size = size
        # The ids of the source's own vocabulary: everything below the specials appended at the end.
        base = size
        while base - 1 in set(self.specials.values()):
            base -= 1
        self.base_vocab_size = base
        self._bytes: bytes | None = None

    # --- construction ---

    @classmethod
    def from_backend(cls, backend, *, eos: str | None = None, pad: str | None = None) -> "HFTokenizer":
        """Wrap ``backend``, naming its own eos / pad tokens when known, appending the specials it lacks."""
        tokenizers = require_tokenizers("a tokenizers tokenizer")
        backend = tokenizers.Tokenizer.from_str(backend.to_str())  # a private copy: specials are added to it
        vocab = backend.get_vocab(with_added_tokens=True)
        if eos is None:
            eos = next((t for t in EOS_CANDIDATES if t in vocab), None)
        chosen = {"eos": eos, "pad": pad if pad is not None and pad != eos else None}
        specials: dict[str, int] = {}
        for name in SPECIAL_NAMES:
            token = chosen.get(name) or ADDED_NAMES[name]
            if token not in vocab:
                backend.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False)])
                vocab = backend.get_vocab(with_added_tokens=True)
            elif not any(t.content == token and t.special for t in backend.get_added_tokens_decoder().values()):
                backend.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False)])
            specials[name] = backend.token_to_id(token)
        if len(set(specials.values())) != len(specials):
            raise Gpt1Error(f"special tokens {specials} share ids: each needs its own")
        return cls(backend, specials)

    @classmethod
    def from_record(cls, data: dict, path: Path) -> "HFTokenizer":
        """The tokenizer of a file written by :meth:`save` (already parsed)."""
        if data.get("version") != FORMAT_VERSION:
            raise Gpt1Error(f"{path} has tokenizer format version {data.get('version')!r}; this tool reads {FORMAT_VERSION}")
        specials, inner = data.get("specials"), data.get("tokenizer")
        if not isinstance(specials, dict) or not is_tokenizers_json(inner):
            raise Gpt1Error(f"{path}: 'specials' and 'tokenizer' must be a JSON object each: the file is corrupt")
        backend = backend_from_json(json.dumps(inner, ensure_ascii=False), str(path))
        try:
            return cls(backend, specials, path=path)
        except Gpt1Error as exc:
            raise Gpt1Error(f"{path}: {exc}: the file is corrupt") from None

    @classmethod
    def from_tokenizers_file(cls, path: str | Path, *, eos: str | None = None, pad: str | None = None) -> "HFTokenizer":
        """A plain ``tokenizers`` ``tokenizer.json`` (as transformers saves it)."""
        text = read_text(path, "tokenizer")
        return cls.from_backend(backend_from_json(text, str(path)), eos=eos, pad=pad)

    # --- storage ---

    def tokenizers_json(self) -> str:
        """The plain ``tokenizers`` JSON (what transformers reads as ``tokenizer.json``)."""
        return self._backend.to_str()

    def record(self) -> dict:
        """Our single-file form: the ``tokenizers`` JSON beside our special tokens."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "specials": self.specials,
                "tokenizer": json.loads(self.tokenizers_json())}

    # --- the tokenizer interface ---

    @property
    def backend(self):
        """The ``tokenizers.Tokenizer`` underneath."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        return self._size

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self._backend.id_to_token(index)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int = 0) -> list[list[int]]:
        """Encode many texts (the library's own thread pool; ``num_threads`` is accepted for the interface)."""
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are dropped."""
        ids = [int(i) for i in ids]
        for index in ids:
            if not 0 <= index < self._size:
                raise Gpt1Error(f"token id {index} is outside the vocabulary of {self._size}")
        return self._backend.decode(ids, skip_special_tokens=True)


def byte_level_bpe(vocab_path: str | Path, merges_path: str | Path, *, add_prefix_space: bool = False,
                   specials: Iterable[str] = ()):
    """GPT-2's byte-level BPE from its ``vocab.json`` + ``merges.txt``, as a ``tokenizers.Tokenizer``
    (``specials``: tokens of the vocabulary that are special, such as ``<|endoftext|>``)."""
    tokenizers = require_tokenizers(f"reading the GPT-2 tokenizer {vocab_path}")
    from tokenizers import decoders, models, pre_tokenizers

    try:
        model = models.BPE.from_file(str(vocab_path), str(merges_path))
    except Exception as exc:  # noqa: BLE001 - the library raises plain Exception for unreadable files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Gpt1Error(f"{vocab_path} + {merges_path} are not a BPE vocabulary and merges ({first}): "
                        "they are corrupt or from another tool") from None
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    present = [t for t in specials if backend.token_to_id(t) is not None]
    if present:
        backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in present])
    return backend
