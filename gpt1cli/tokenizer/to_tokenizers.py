"""Our tokenizers expressed as ``tokenizers`` pipelines, for a ``tokenizer.json`` transformers loads.

:func:`to_tokenizers` returns a ``tokenizers.Tokenizer`` giving the same ids as ours, with our
special tokens at their ids.

* **SentencePiece BPE** (:func:`sentencepiece_pipeline`): the model's pieces, scores and
  normaliser settings are read from the ``.model`` file. SentencePiece merges, at each step, the
  adjacent pair whose concatenation is the best-scored piece; a ``tokenizers`` BPE merges the
  best-ranked pair of its merge list. The list holds every split of every piece into two pieces,
  ranked by the whole piece's score, so the two agree except where pairs that make the same piece
  overlap (SentencePiece takes the leftmost, the list the one listed first), which ordinary text
  does not meet. Whitespace becomes ``\u2581`` with one prepended (``add_dummy_prefix``);
  characters outside the vocabulary fall back to byte pieces. Only the ``identity`` normalisation
  (what ``gpt1 tokenize`` trains with) is expressed: a model trained with NFKC rules is refused.
  Decoding agrees on every sequence of whole UTF-8 characters; a run of byte pieces that is not
  valid UTF-8 becomes one U+FFFD per byte piece (SentencePiece keeps the valid part).
* **The original GPT-1 BPE** (:func:`openai_pipeline`): the release's clean-up and the spaCy-like
  word splitter of :mod:`.openai_bpe` as normalisers and regular-expression splits, lower-casing,
  and BPE with ``</w>`` word ends, unknown pieces as id 0. ``tokenizers`` lower-cases before it
  splits words, so the two splitting rules of ours that look at case read lower case: a period
  between a lower-case letter and a capital (``end.The`` stays one word, ours splits it; also
  ``U.S.'s``-like runs), and a word-final period after a single capital that follows a
  non-capital (``McD.`` and ``eU.S.`` split, ours keeps them). Otherwise (ordinary text, and
  lower-case text of any punctuation) it encodes identically. A newline decodes with spaces
  around it (``a \\n b``; ours ``a\\nb``), as transformers' own OpenAI GPT tokenizer does.
"""

from __future__ import annotations

import struct

from ..errors import Gpt1Error
from .hf_tokenizers import require_tokenizers

WORD_BOUNDARY = "\u2581"  # SentencePiece's ▁

# --- reading a SentencePiece .model file (a protobuf ModelProto; no protobuf dependency) ---


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """``(field number, wire type, value)`` of one protobuf message, in order."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
        yield number, wire, value


# ModelProto: 1 pieces, 2 trainer_spec, 3 normalizer_spec. SentencePiece: 1 piece, 2 score, 3 type.
# TrainerSpec: 3 model_type (1 unigram, 2 BPE), 24 treat_whitespace_as_suffix, 35 byte_fallback, 44 unk_surface.
# NormalizerSpec: 1 name, 2 precompiled_charsmap, 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def read_sentencepiece_model(path) -> dict:
    """Pieces ``(piece, score, type)`` and the trainer / normaliser settings of a ``.model`` file."""
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        raise Gpt1Error(f"cannot read the SentencePiece model {path}: {exc.strerror or exc}") from None
    spec = {"pieces": [], "model_type": 1, "byte_fallback": False, "suffix": False, "unk_surface": " \u2047 ",
            "name": "", "charsmap": b"", "dummy_prefix": True, "extra_whitespace": True, "escape": True}
    try:
        for number, _, value in _fields(data):
            if number == 1:
                piece = {"piece": "", "score": 0.0, "type": NORMAL}
                for n, _, v in _fields(value):
                    if n == 1:
                        piece["piece"] = v.decode("utf-8")
                    elif n == 2:
                        piece["score"] = struct.unpack("<f", v)[0]
                    elif n == 3:
                        piece["type"] = v
                spec["pieces"].append(piece)
            elif number == 2:
                for n, _, v in _fields(value):
                    if n == 3:
                        spec["model_type"] = v
                    elif n == 24:
                        spec["suffix"] = bool(v)
                    elif n == 35:
                        spec["byte_fallback"] = bool(v)
                    elif n == 44:
                        spec["unk_surface"] = v.decode("utf-8")
            elif number == 3:
                for n, _, v in _fields(value):
                    if n == 1:
                        spec["name"] = v.decode("utf-8")
                    elif n == 2:
                        spec["charsmap"] = v
                    elif n == 3:
                        spec["dummy_prefix"] = bool(v)
                    elif n == 4:
                        spec["extra_whitespace"] = bool(v)
                    elif n == 5:
                        spec["escape"] = bool(v)
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise Gpt1Error(f"{path} is not a SentencePiece model ({exc}): it is corrupt or another format") from None
    return spec


def sentencepiece_pipeline(tokenizer):
    """A ``tokenizers.Tokenizer`` equal to the SentencePiece BPE ``tokenizer`` (see the module notes)."""
    tk = require_tokenizers("writing a tokenizer.json for transformers")
    from tokenizers import decoders, models, normalizers

    path = tokenizer.path
    spec = read_sentencepiece_model(path)
    if spec["model_type"] != 2:
        raise Gpt1Error(f"{path} is a SentencePiece {'unigram' if spec['model_type'] == 1 else 'non-BPE'} model: "
                        "only BPE models (what `gpt1 tokenize` trains) convert to tokenizer.json")
    if spec["charsmap"] or spec["name"] not in ("", "identity"):
        raise Gpt1Error(f"{path} normalises text with SentencePiece's {spec['name'] or 'custom'!r} rules, which "
                        "tokenizer.json cannot express exactly: train the tokenizer with `gpt1 tokenize` (identity rules)")
    if spec["suffix"] or not spec["escape"]:
        raise Gpt1Error(f"{path} treats whitespace in a way tokenizer.json cannot express (whitespace as suffix, or "
                        "not escaped): train the tokenizer with `gpt1 tokenize`")
    pieces = spec["pieces"]
    if len(pieces) != tokenizer.vocab_size:
        raise Gpt1Error(f"{path} holds {len(pieces)} pieces where SentencePiece reports {tokenizer.vocab_size}: it is corrupt")
    vocab = {p["piece"]: i for i, p in enumerate(pieces)}
    mergeable = {p["piece"]: i for i, p in enumerate(pieces) if p["type"] in (NORMAL, USER_DEFINED)}
    unk = next((p["piece"] for p in pieces if p["type"] == UNKNOWN), None)
    ranked = []
    for index, p in enumerate(pieces):
        text = p["piece"]
        if p["type"] != NORMAL or len(text) < 2:
            continue
        for k in range(1, len(text)):
            left, right = text[:k], text[k:]
            if left in mergeable and right in mergeable:
                ranked.append((-p["score"], index, mergeable[left], mergeable[right], left, right))
    ranked.sort()
    merges = [(left, right) for *_, left, right in ranked]
    backend = tk.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                                      byte_fallback=spec["byte_fallback"]))
    steps = []
    if spec["extra_whitespace"]:  # SentencePiece drops leading, trailing and repeated spaces
        steps += [normalizers.Replace(tk.Regex("^ +| +$"), ""), normalizers.Replace(tk.Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", WORD_BOUNDARY))
    if spec["dummy_prefix"]:
        steps.append(normalizers.Prepend(WORD_BOUNDARY))
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = None
    chain = []
    if unk is not None:
        chain.append(decoders.Replace(unk, spec["unk_surface"]))
    chain += [decoders.Replace(WORD_BOUNDARY, " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec["dummy_prefix"]:
        chain.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(chain)
    specials = {p["piece"]: i for i, p in enumerate(pieces) if p["type"] == CONTROL}
    _add_specials(tk, backend, specials)
    user = [tk.AddedToken(p["piece"], special=False, normalized=False) for p in pieces if p["type"] == USER_DEFINED]
    if user:
        backend.add_tokens(user)
    return backend


def _add_specials(tk, backend, tokens: dict[str, int]) -> None:
    """``tokens`` (token -> id) as added special tokens at their ids."""
    tokens = sorted(tokens.items(), key=lambda item: item[1])
    backend.add_special_tokens([tk.AddedToken(token, special=True, normalized=False) for token, _ in tokens])
    for token, index in tokens:
        if backend.token_to_id(token) != index:
            raise Gpt1Error(f"special token {token!r} would have id {backend.token_to_id(token)} in tokenizer.json, "
                            f"not {index}")



# --- the original GPT-1 BPE ---

# Characters standardize() spaces out (each becomes a word of its own), and those _split_word()
# takes off either end of a word (the ASCII ones; any non-ASCII punctuation or symbol as well).
_SPACED = r"[\-~!\";?+,)(\\/*\[\]}{|_]"
_EDGE_CHARS = r"%=:<>#&'$^`[[^\x00-\x7F]&&[\p{P}\p{S}]]"
_EDGE = f"[{_EDGE_CHARS}]"
_CLITIC = r"(?:n't|'s|'m|'re|'ve|'d|'ll)"
_LETTER = r"[^\W\d_]"
# What may follow a piece split off a word's end, to the end of the word: clitics (each after a
# letter), then punctuation and periods.
_TAIL = rf"(?=(?:{_CLITIC})*(?:{_EDGE}|\.)*\z)"
_PUNCT_TAIL = rf"(?=(?:{_EDGE}|\.)*\z)"
_ABBREVIATIONS = r"mr|mrs|ms|dr|prof|st|jr|sr|mt|vs|etc|e\.g|i\.e|a\.m|p\.m|inc|ltd|corp|gen|gov|rev|sen|rep"
# Leading punctuation and ellipses come off a word first (split further by the next pass).
_LEADING = rf"\A(?:\.\.+|{_EDGE})+"
# Then one pass over each lower-cased word (whitespace, _SPACED characters and leading punctuation
# already split off): what it matches is isolated, the text between matches kept whole. Earlier
# alternatives win.
_WORD_SPLIT = "|".join([
    rf"\A(?:(?:{_ABBREVIATIONS})\.|(?:{_LETTER}\.)+)(?=(?:{_EDGE}[.{_EDGE_CHARS}]*)?\z)",  # kept whole
    r"\.\.+",                                             # an ellipsis, anywhere
    rf"(?<={_LETTER}){_CLITIC}{_TAIL}",                   # n't 's 'm 're 've 'd 'll
    rf"{_EDGE}{_PUNCT_TAIL}",                             # trailing punctuation
    rf"(?:(?<=[\p{{Ll}}\d])|(?<={_EDGE}))\.{_PUNCT_TAIL}",  # a word-final period
    r"(?<=[a-z'])\.(?=')",                                # a period before a quote
    r"(?<=[a-z0-9])[:<>=](?=[a-z])",                      # a:b, a=b
    r"(?<=[0-9])\^(?=[0-9])",                             # 2^10
])



def openai_pipeline(tokenizer):
    """A ``tokenizers.Tokenizer`` equal to the original GPT-1 BPE ``tokenizer`` on ordinary text
    (see the module notes)."""
    tk = require_tokenizers("writing a tokenizer.json for transformers")
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    from .openai_bpe import _CHARACTER_FIXES, NEWLINE_TOKEN, SPECIAL_TOKENS, UNKNOWN_ID, WORD_END

    vocab = {token: i for i, token in enumerate(tokenizer.vocab)}
    merges = [(a, b) for a, b in tokenizer.merges if a in vocab and b in vocab and a + b in vocab]
    backend = tk.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=tokenizer.vocab[UNKNOWN_ID],
                                      end_of_word_suffix=WORD_END, fuse_unk=False))
    newline = NEWLINE_TOKEN in vocab
    steps = [normalizers.Replace("\r\n", "\n"), normalizers.NFC()]
    steps += [normalizers.Replace(chr(code), target) for code, target in _CHARACTER_FIXES.items()]
    steps += [normalizers.Replace(tk.Regex("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff\u200b]"), ""), normalizers.Strip()]
    if newline:
        steps.append(normalizers.Replace(tk.Regex(r"\s*\n\s*"), "\n"))
    steps.append(normalizers.Lowercase())
    backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tk.Regex(r"[^\S\n]+" if newline else r"\s+"), "removed"),
        pre_tokenizers.Split("\n", "isolated"),
        pre_tokenizers.Split(tk.Regex(_SPACED), "isolated"),
        pre_tokenizers.Split(tk.Regex(_LEADING), "isolated"),
        pre_tokenizers.Split(tk.Regex(_WORD_SPLIT), "isolated"),
    ])
    backend.decoder = decoders.BPEDecoder(suffix=WORD_END)
    _add_specials(tk, backend, {token: tokenizer.specials[name] for name, token in SPECIAL_TOKENS.items()})
    return backend, len(tokenizer.merges) - len(merges)


def to_tokenizers(tokenizer):
    """``(tokenizers.Tokenizer, notes)`` for any tokenizer of ours."""
    if tokenizer.kind == "sentencepiece":
        return sentencepiece_pipeline(tokenizer), []
    if tokenizer.kind == "openai-bpe":
        backend, dropped = openai_pipeline(tokenizer)
        notes = [f"{dropped} merges whose pieces are not in the vocabulary were left out of tokenizer.json"] if dropped else []
        return backend, notes
    if tokenizer.kind == "hf-tokenizers":
        return tokenizer.backend, []
    raise Gpt1Error(f"no tokenizer.json form for a {tokenizer.kind} tokenizer")
