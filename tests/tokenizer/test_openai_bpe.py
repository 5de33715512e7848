"""The original GPT-1 BPE tokenizer: parity with transformers, the release's clean-up, storage, shards."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import support
from support import learn_bpe, make_text, write_release_tokenizer
from gpt1cli.errors import Gpt1Error
from gpt1cli.fileio import file_hash
from gpt1cli.tokenizer import load_tokenizer
from gpt1cli.tokenizer.openai_bpe import (
    NEWLINE_TOKEN, UNKNOWN_ID, OpenAIBPETokenizer, pre_tokenize, standardize,
)


@pytest.fixture(scope="module")
def release(toy_bpe, tmp_path_factory):
    vocab, merges = toy_bpe
    return write_release_tokenizer(tmp_path_factory.mktemp("release"), vocab, merges)


def test_encoding_matches_transformers(bpe_tok, toy_bpe):
    transformers = pytest.importorskip("transformers")
    vocab, merges = toy_bpe
    reference = transformers.OpenAIGPTTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
    for seed in range(100, 112):  # texts the merges were not learned from
        text = make_text(seed)
        assert bpe_tok.encode(text) == reference.encode(text, add_special_tokens=False), seed
    texts = [make_text(s, 3) for s in range(3)]
    assert bpe_tok.encode_batch(texts, num_threads=2) == [reference.encode(t, add_special_tokens=False) for t in texts]


def test_bpe_applies_merges_by_rank():
    vocab = ["a", "b", "c", "a</w>", "b</w>", "c</w>", "ab", "abc</w>", "bc</w>"]
    bpe_tok = OpenAIBPETokenizer(vocab, [("a", "b"), ("b", "c</w>"), ("ab", "c</w>")])
    assert bpe_tok.bpe("abc") == ["abc</w>"]  # (a, b) ranks first, so "bc</w>" never forms
    assert bpe_tok.bpe("bc") == ["bc</w>"]
    assert bpe_tok.encode("ABC bc cab") == [7, 8, 2, 0, 4]  # lower-cased; "cab" has no merge: c, a, b</w>
    assert bpe_tok.bpe("a") == ["a</w>"]


@pytest.mark.parametrize("text, words", [
    ("Hello, world! The cat (and dog) sat.", ["Hello", ",", "world", "!", "The", "cat", "(", "and", "dog", ")", "sat", "."]),
    ("I don't know; can't, won't.", ["I", "do", "n't", "know", ";", "ca", "n't", ",", "wo", "n't", "."]),
    ("John's dogs' toys", ["John", "'s", "dogs", "'", "toys"]),
    ("Mr. Smith met U.S. troops, e.g. at 3.14 p.m. today.",
     ["Mr.", "Smith", "met", "U.S.", "troops", ",", "e.g.", "at", "3.14", "p.m.", "today", "."]),
    ("wait...what ok... IBM. A.", ["wait", "...", "what", "ok", "...", "IBM", ".", "A."]),
    ("a well-known fact -- $5 or 50%", ["a", "well", "-", "known", "fact", "-", "-", "$", "5", "or", "50", "%"]),
    ("\u201cCurly\u201d \u2018quotes\u2019 \u2014 and\u2026 \ufb01ne", ['"', "Curly", '"', "'", "quotes", "'", "-", "and", "...", "fine"]),
    ("one\r\n\n  two\tthree\x00", ["one", "\n", "two", "three"]),
])
def test_pre_tokenizer_follows_spacy_on_english(text, words):
    assert pre_tokenize(text) == words


def test_standardize_is_the_releases_clean_up():
    assert standardize("  a\u2013b \u2026 c\u00b4s\n\n d  ") == "a - b ... c's \n d"
    assert standardize("x!!y,z") == "x !! y , z"


def test_special_tokens_follow_the_vocabulary(bpe_tok):
    base = bpe_tok.base_vocab_size
    assert bpe_tok.specials == {"start": base, "delim": base + 1, "extract": base + 2, "pad": base + 3, "eos": base + 4}
    special_ids = (bpe_tok.start_id, bpe_tok.delim_id, bpe_tok.extract_id, bpe_tok.pad_id, bpe_tok.eos_id)
    assert special_ids == tuple(range(base, base + 5))
    assert bpe_tok.vocab_size == base + 5
    ids = bpe_tok.encode(make_text(5) + " _start_ _classify_ _pad_")
    assert max(ids) < base
    assert bpe_tok.decode([bpe_tok.start_id, *bpe_tok.encode("the dog"), bpe_tok.extract_id, bpe_tok.eos_id]) == "the dog"
    with pytest.raises(Gpt1Error, match="outside the vocabulary"):
        bpe_tok.decode([bpe_tok.vocab_size])


def test_decode_joins_words_and_lowercases(bpe_tok):
    text = make_text(9, 4)
    words = [w.lower() for w in pre_tokenize(text)]
    assert bpe_tok.decode(bpe_tok.encode(text)) == " ".join(words)
    # Decoding a prefix gives a prefix of the full text (what streaming generation relies on).
    ids = bpe_tok.encode(text)
    full = bpe_tok.decode(ids)
    assert all(full.startswith(bpe_tok.decode(ids[:n])) for n in range(len(ids)))


def test_unknown_characters_and_newlines(bpe_tok):
    assert bpe_tok.encode("\u4e2d") == [UNKNOWN_ID]  # outside the alphabet: id 0, as the original code did
    newline = bpe_tok.encode("dog\ndog")
    assert newline[len(newline) // 2] == bpe_tok.vocab.index(NEWLINE_TOKEN)
    assert bpe_tok.decode(newline) == "dog\ndog"
    plain = OpenAIBPETokenizer([t for t in bpe_tok.vocab if t != NEWLINE_TOKEN], bpe_tok.merges)
    assert plain.encode("dog\ndog") == plain.encode("dog dog")  # no newline token: plain whitespace


def test_save_load_round_trip(bpe_tok, tmp_path):
    path = bpe_tok.save(tmp_path / "tokenizer.json")
    assert not [p for p in tmp_path.iterdir() if p.name != "tokenizer.json"], "a temporary file was left behind"
    assert bpe_tok.hash() == file_hash(path)
    again = OpenAIBPETokenizer.load(path)
    assert (again.vocab, again.merges, again.specials) == (bpe_tok.vocab, bpe_tok.merges, bpe_tok.specials)
    text = make_text(21)
    assert again.encode(text) == bpe_tok.encode(text)
    assert again.hash() == bpe_tok.hash() and again.save(tmp_path / "copy.json").read_bytes() == path.read_bytes()
    assert again.save(path) == path  # saving onto itself is a no-op
    loaded = load_tokenizer(path)
    assert isinstance(loaded, OpenAIBPETokenizer) and loaded.kind == "openai-bpe" and loaded.file_suffix == ".json"
    assert json.loads(path.read_text())["format"] == "gpt1-openai-bpe"


def test_load_tokenizer_reads_release_dirs(release, bpe_tok):
    loaded = load_tokenizer(f"openai:{release}")
    assert loaded.to_bytes() == bpe_tok.to_bytes()


def test_bad_tokenizer_files_are_one_clear_error(release, toy_bpe, tmp_path):
    with pytest.raises(Gpt1Error, match="not found"):
        OpenAIBPETokenizer.from_release_dir(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Gpt1Error, match="lacks the encoder"):
        OpenAIBPETokenizer.from_release_dir(empty)
    cases = {
        "not json": ("encoder_bpe_40000.json", "{", "cannot read the encoder"),
        "gap": ("encoder_bpe_40000.json", json.dumps({"a": 0, "b": 2}), "no token with id 1"),
        "bad id": ("encoder_bpe_40000.json", json.dumps({"a": "x"}), "not a token id"),
        "merges": ("vocab_40000.bpe", "#version: 0.2\na b\na b c\n", "vocab_40000.bpe:3: expected two symbols"),
        "no merges": ("vocab_40000.bpe", "#version: 0.2\n", "holds no merges"),
    }
    for name, (file, content, message) in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        write_release_tokenizer(folder, *toy_bpe)
        (folder / file).write_text(content)
        with pytest.raises(Gpt1Error, match=message):
            OpenAIBPETokenizer.from_release_dir(folder)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(Gpt1Error, match="not an OpenAI BPE tokenizer file"):
        OpenAIBPETokenizer.load(other)


def test_tokenize_command_with_openai_tokenizer(release, bpe_tok, tmp_path, capsys):
    docs = [[make_text(1000 + d * 3 + i, 2) for i in range(1 + d % 3)] for d in range(30)]
    corpus = support.write_txt(tmp_path / "corpus.txt", docs)
    out = tmp_path / "shards"
    result = support.run_main(["tokenize", corpus, "--out", out, "--tokenizer", f"openai:{release}", "--val-fraction", "0.2",
                               "--tokens-per-shard", "700", "--seed", "0", "--threads", "1", "--quiet"], capsys)
    assert result.code == 0, result.err
    manifest = support.read_manifest(out)
    assert manifest["tokenizer"]["kind"] == "openai-bpe" and manifest["tokenizer"]["file"] == "tokenizer.json"
    assert manifest["tokenizer"]["vocab_size"] == bpe_tok.vocab_size
    assert OpenAIBPETokenizer.load(out / "tokenizer.json").to_bytes() == bpe_tok.to_bytes()
    rng = np.random.default_rng(0)
    expected = {"train": [], "val": []}
    for lines in docs:
        tokens = [t for line in lines for t in bpe_tok.encode(line)] + [bpe_tok.eos_id]
        expected["val" if rng.random() < 0.2 else "train"].extend(tokens)
    assert expected["val"], "the seeded split should hold documents out"
    for split in ("train", "val"):
        assert support.split_tokens(out, split).tolist() == expected[split]


def test_learned_toy_vocabulary_has_the_release_shape():
    vocab, merges = learn_bpe(["The cat sat. The cat ran."], 5)
    assert vocab[-1] == NEWLINE_TOKEN and len(merges) == 5
    assert all(a + b in vocab for a, b in merges)


@pytest.mark.parametrize("content, message", [
    ('{"a": ' + "9" * 5000 + "}", "holds a value JSON cannot be read into"),
    ("[" * 100_000 + "]" * 100_000, "is nested too deeply"),
], ids=["huge-id", "deep-nesting"])
def test_json_bombs_in_a_release_encoder_are_one_clear_error(toy_bpe, tmp_path, content, message):
    folder = tmp_path / "release"
    write_release_tokenizer(folder, *toy_bpe)
    (folder / "encoder_bpe_40000.json").write_text(content)
    with pytest.raises(Gpt1Error, match=f"cannot read the encoder .*: the file {message}"):
        OpenAIBPETokenizer.from_release_dir(folder)


def test_release_files_with_a_byte_order_mark(release, bpe_tok, tmp_path):
    folder = tmp_path / "with-bom"
    shutil.copytree(release, folder)
    for path in folder.iterdir():
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert OpenAIBPETokenizer.from_release_dir(folder).to_bytes() == bpe_tok.to_bytes()
