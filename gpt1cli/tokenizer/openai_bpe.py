"""The original GPT-1 tokenizer: lower-cased BPE over words, with word-final ``</w>`` markers.

The release ships two files: an encoder (``encoder_bpe_40000.json``, token -> id, 40,478 entries)
and the merges (``vocab_40000.bpe``: a version header, then one ``left right`` pair per line, by
rank). transformers' ``vocab.json`` + ``merges.txt`` are the same two files under other names, and
both spellings are read.

Encoding follows the original code: clean the text up (``standardize``), split it into words
(``pre_tokenize``), lower-case each word, and merge its characters (the last one carrying ``</w>``)
by merge rank. A piece missing from the encoder (a character outside the release's alphabet)
becomes id 0, as in the original; a newline is the ``"\\n</w>"`` token when the encoder has one,
otherwise plain whitespace.

The original split words with ftfy and spaCy's English tokenizer; neither is a dependency here.
``standardize`` does ftfy's part that matters for English text (NFC, quotes, dashes, ellipsis,
ligatures, line breaks, control characters) plus the release's own clean-up, and
``pre_tokenize`` re-implements spaCy's prefix / suffix / infix rules for ordinary text. Known
differences from spaCy: no URL, email, emoticon or unit rules (``5km`` stays one word), a short
fixed abbreviation list, and the clitics ``n't 's 'm 're 've 'd 'll`` are split after any word
(spaCy splits ``'s`` after any word, the others only for its listed contractions). Differences
from transformers' ``OpenAIGPTTokenizer`` (BERT's normaliser and punctuation splitter): it strips
accents, drops newlines, and splits every punctuation character, so ``don't``, ``U.S.``,
``e.g.``, ``3.14``, ``10:30`` and ``wait...`` tokenize differently; on words, numbers without
separators, spaces and punctuation marks between words the two agree token for token.

Special tokens come after the vocabulary, in the order the original fine-tuning code appended
them: ``_start_``, ``_delimiter_``, ``_classify_`` (40478, 40479, 40480 for the release), then
``_pad_`` and ``_eos_`` for this toolkit's padding and end-of-document ids (40481, 40482).
Encoding text never produces them. ``save`` writes one self-contained JSON file.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Iterable

from ..errors import Gpt1Error
from ..fileio import parse_json, read_json
from .base import JsonTokenizer

ENCODER_NAMES = ("encoder_bpe_40000.json", "vocab.json")
MERGES_NAMES = ("vocab_40000.bpe", "merges.txt")
WORD_END = "</w>"
NEWLINE_TOKEN = "\n" + WORD_END
UNKNOWN_ID = 0
# Interface name -> token, in id order after the vocabulary.
SPECIAL_TOKENS = {"start": "_start_", "delim": "_delimiter_", "extract": "_classify_", "pad": "_pad_", "eos": "_eos_"}
FORMAT = "gpt1-openai-bpe"
FORMAT_VERSION = 1
_CACHE_LIMIT = 200_000

# --- clean-up (the part of ftfy that English text needs, then the release's text_standardize) ---

_CHARACTER_FIXES = str.maketrans({
    "\u2014": "-", "\u2013": "-", "\u2015": "-", "\u2026": "...", "\u00b4": "'",
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u02bc": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
    "\r": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n",
})
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff\u200b]")
_SPACED_RUNS = re.compile(r"""(-+|~+|!+|"+|;+|\?+|\++|,+|\)+|\(+|\\+|/+|\*+|\[+|\]+|\}+|\{+|\|+|_+)""")
_AROUND_NEWLINE = re.compile(r"\s*\n\s*")
_SPACES = re.compile(r"[^\S\n]+")


def _spaced(match: re.Match) -> str:
    return f" {match.group()} "


def standardize(text: str) -> str:
    """The release's clean-up: unify quotes, dashes and ellipses, space out punctuation runs,
    make each newline a separate word and collapse other whitespace to single spaces."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text.replace("\r\n", "\n")).translate(_CHARACTER_FIXES)
    else:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _SPACED_RUNS.sub(_spaced, text)
    text = _AROUND_NEWLINE.sub(" \n ", text)
    return _SPACES.sub(" ", text).strip()


# --- spaCy-like word splitting ---

# Characters split off either end of a word (spaCy's punctuation, quote, bracket and currency lists).
_EDGE_PUNCT = set("§%=,:;!?()[]{}<>_#*&'\"`$~^|\\/+-")
_CLITIC = re.compile(r"(?<=[^\W\d_])(n't|'s|'m|'re|'ve|'d|'ll)$", re.IGNORECASE)
_INITIALS = re.compile(r"^(?:[^\W\d_]\.)+$")
_ABBREVIATIONS = frozenset(
    "mr. mrs. ms. dr. prof. st. jr. sr. mt. vs. etc. e.g. i.e. a.m. p.m. inc. ltd. corp. gen. gov. rev. sen. rep.".split()
)
_INFIX = re.compile(
    r"\.\.+"                                   # an ellipsis inside a word
    r"|(?<=[a-z'\"])\.(?=[A-Z'\"])"            # a sentence boundary without a space
    r"|(?<=[A-Za-z0-9])[:<>=](?=[A-Za-z])"     # a:b, a=b
    r"|(?<=[0-9])\^(?=[0-9-])"                 # 2^10
)


def _is_edge_punct(ch: str) -> bool:
    if ch.isascii():
        return ch in _EDGE_PUNCT
    return unicodedata.category(ch)[0] in "PS"


def _is_kept_whole(word: str) -> bool:
    return "." in word and (word.lower() in _ABBREVIATIONS or bool(_INITIALS.match(word)))


def _period_splits(word: str) -> bool:
    """spaCy's rule for a final period: after a lower-case letter, a digit, punctuation or two capitals."""
    if len(word) < 2 or _is_kept_whole(word):
        return False
    before = word[-2]
    if before.islower() or before.isdigit() or _is_edge_punct(before):
        return True
    return len(word) >= 3 and before.isupper() and word[-3].isupper()


def _split_word(word: str) -> list[str]:
    prefixes: list[str] = []
    suffixes: list[str] = []
    while word and not _is_kept_whole(word):
        if word.startswith(".."):
            run = len(word) - len(word.lstrip("."))
            prefixes.append(word[:run])
            word = word[run:]
        elif _is_edge_punct(word[0]) and len(word) > 1:
            prefixes.append(word[0])
            word = word[1:]
        elif word.endswith("..") and len(word) > 2:
            run = len(word) - len(word.rstrip("."))
            suffixes.append(word[-run:])
            word = word[:-run]
        elif clitic := _CLITIC.search(word):
            suffixes.append(clitic.group(1))
            word = word[: clitic.start()]
        elif _is_edge_punct(word[-1]) and len(word) > 1:
            suffixes.append(word[-1])
            word = word[:-1]
        elif word.endswith(".") and _period_splits(word):
            suffixes.append(".")
            word = word[:-1]
        else:
            break
    middle: list[str] = []
    if word:
        start = 0
        for match in _INFIX.finditer(word):
            if match.start() > start:
                middle.append(word[start : match.start()])
            middle.append(match.group())
            start = match.end()
        if start < len(word):
            middle.append(word[start:])
    return prefixes + middle + suffixes[::-1]


def pre_tokenize(text: str) -> list[str]:
    """Standardize ``text`` and split it into words the way spaCy's English tokenizer would
    (case kept; see the module notes for where it differs)."""
    words: list[str] = []
    for chunk in standardize(text).split(" "):
        if chunk.isalnum() or chunk == "\n":  # most words: nothing to split off
            words.append(chunk)
        elif chunk:
            words.extend(_split_word(chunk))
    return words


# --- reading the release files ---


def _find(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise Gpt1Error(f"{folder} lacks the {what} ({' or '.join(names)}): it is not an OpenAI GPT tokenizer directory")


def read_encoder(path: Path) -> list[str]:
    """The vocabulary of an encoder JSON as tokens in id order (aliases of an id are dropped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise Gpt1Error(f"cannot read the encoder {path}: {exc}") from None
    try:
        data = parse_json(text, "the file")  # also a 5000-digit id or nesting deep enough to exhaust the stack
    except Gpt1Error as exc:
        raise Gpt1Error(f"cannot read the encoder {path}: {exc}") from None
    if not isinstance(data, dict) or not data:
        raise Gpt1Error(f"the encoder {path} is not a JSON object of token -> id: it is corrupt or another format")
    by_id: dict[int, str] = {}
    for token, index in data.items():
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise Gpt1Error(f"the encoder {path} maps {token!r} to {index!r}, not a token id: it is corrupt")
        by_id.setdefault(index, token)  # transformers' vocab.json adds "<unk>" as an alias of id 0
    size = max(by_id) + 1
    if len(by_id) != size:
        missing = next(i for i in range(size) if i not in by_id)
        raise Gpt1Error(f"the encoder {path} has no token with id {missing} (ids must run from 0 to {size - 1})")
    return [by_id[i] for i in range(size)]


def read_merges(path: Path) -> list[tuple[str, str]]:
    """Merge pairs in rank order from a merges file (a ``#version`` header line, then ``a b`` lines)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise Gpt1Error(f"cannot read the merges {path}: {exc}") from None
    if lines and lines[0].startswith("#"):
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise Gpt1Error(f"{path}:{number}: expected two symbols separated by a space, got {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise Gpt1Error(f"the merges file {path} holds no merges")
    return merges


class OpenAIBPETokenizer(JsonTokenizer):
    """The original GPT-1 BPE with this toolkit's tokenizer interface (see :mod:`gpt1cli.tokenizer.base`)."""

    kind = "openai-bpe"
    file_suffix = ".json"

    def __init__(self, vocab: list[str], merges: list[tuple[str, str]], *, path: str | Path | None = None):
        """``vocab``: ordinary tokens in id order (no special tokens); ``merges`` by rank."""
        self.vocab = list(vocab)
        self.merges = [tuple(m) for m in merges]
        self.path = None if path is None else Path(path)
        clash = [t for t in SPECIAL_TOKENS.values() if t in set(self.vocab)]
        if clash:
            raise Gpt1Error(f"special tokens {clash} must follow the vocabulary, not sit inside it")
        self.base_vocab_size = len(self.vocab)
        self.specials = {name: self.base_vocab_size + i for i, name in enumerate(SPECIAL_TOKENS)}
        self._encoder = {token: i for i, token in enumerate(self.vocab)}
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._newline = self._encoder.get(NEWLINE_TOKEN)
        self._cache: dict[str, list[int]] = {}
        self._bytes: bytes | None = None

    # --- construction and storage ---

    @classmethod
    def from_release_dir(cls, folder: str | Path) -> "OpenAIBPETokenizer":
        """Read ``encoder_bpe_40000.json`` + ``vocab_40000.bpe`` (or ``vocab.json`` + ``merges.txt``).

        Special tokens already at the end of the encoder (as in an export of ours) are recognised,
        not appended twice."""
        folder = Path(folder)
        if not folder.is_dir():
            raise Gpt1Error(f"OpenAI tokenizer directory not found: {folder}")
        encoder_path = _find(folder, ENCODER_NAMES, "encoder")
        merges_path = _find(folder, MERGES_NAMES, "merges")
        vocab = read_encoder(encoder_path)
        names = list(SPECIAL_TOKENS.values())
        present = [t for t in names if t in vocab]
        if present:
            if vocab[-len(names):] != names:
                raise Gpt1Error(f"the encoder {encoder_path} holds {present} but not as its last "
                                f"{len(names)} tokens in the order {names}")
            vocab = vocab[: -len(names)]
        return cls(vocab, read_merges(merges_path))

    @classmethod
    def load(cls, path: str | Path) -> "OpenAIBPETokenizer":
        """Read the single-file form written by :meth:`save`."""
        path = Path(path)
        data = read_json(path, "tokenizer")
        if data.get("format") != FORMAT:
            raise Gpt1Error(f"{path} is not an OpenAI BPE tokenizer file of this toolkit (format {data.get('format')!r})")
        if data.get("version") != FORMAT_VERSION:
            raise Gpt1Error(f"{path} has tokenizer format version {data.get('version')!r}; this tool reads {FORMAT_VERSION}")
        vocab, merges, specials = data.get("vocab"), data.get("merges"), data.get("specials")
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab) or not vocab:
            raise Gpt1Error(f"{path}: 'vocab' must be a non-empty list of tokens: the file is corrupt")
        if not isinstance(merges, list) or not all(isinstance(m, str) and len(m.split(" ")) == 2 for m in merges):
            raise Gpt1Error(f"{path}: 'merges' must be a list of 'left right' strings: the file is corrupt")
        if specials != SPECIAL_TOKENS:
            raise Gpt1Error(f"{path}: special tokens {specials!r} differ from {SPECIAL_TOKENS!r}: the file is corrupt")
        return cls(vocab, [tuple(m.split(" ")) for m in merges], path=path)

    def record(self) -> dict:
        """Our single-file form: vocabulary, merges and special tokens."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "specials": SPECIAL_TOKENS, "unknown_id": UNKNOWN_ID,
                "vocab": self.vocab, "merges": [f"{a} {b}" for a, b in self.merges]}

    def encoder(self) -> dict[str, int]:
        """Token -> id for every id, special tokens included (transformers' ``vocab.json``)."""
        full = dict(self._encoder)
        full.update({token: self.specials[name] for name, token in SPECIAL_TOKENS.items()})
        return full

    # --- the tokenizer interface ---

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size + len(SPECIAL_TOKENS)

    def bpe(self, word: str) -> list[str]:
        """The BPE pieces of one (lower-cased) word, the last one ending in ``</w>``."""
        symbols = list(word[:-1]) + [word[-1] + WORD_END]
        ranks = self._ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = pair, rank
            if best is None:
                break
            first, second = best
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_ids(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = [self._encoder.get(piece, UNKNOWN_ID) for piece in self.bpe(word.lower())]
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens)."""
        ids: list[int] = []
        for word in pre_tokenize(text):
            if word == "\n":
                if self._newline is not None:
                    ids.append(self._newline)
                continue
            ids.extend(self._word_ids(word))
        return ids

    def encode_batch(self, texts: list[str], num_threads: int = 0) -> list[list[int]]:
        """Encode many texts. Pure Python: ``num_threads`` is accepted for the interface and ignored."""
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``: pieces joined, ``</w>`` read as a space; special tokens are dropped."""
        out: list[str] = []
        space = False
        vocab = self.vocab
        for index in ids:
            index = int(index)
            if index >= self.base_vocab_size:
                if index >= self.vocab_size or index < 0:
                    raise Gpt1Error(f"token id {index} is outside the vocabulary of {self.vocab_size}")
                continue
            if index < 0:
                raise Gpt1Error(f"token id {index} is outside the vocabulary of {self.vocab_size}")
            piece = vocab[index]
            if piece == NEWLINE_TOKEN:
                out.append("\n")
                space = False
                continue
            if space:
                out.append(" ")
            if piece.endswith(WORD_END):
                out.append(piece[: -len(WORD_END)])
                space = True
            else:
                out.append(piece)
                space = False
        return "".join(out)
