"""The SentencePiece BPE tokenizer: special ids, round trips, reuse with --tokenizer, bad models."""

from __future__ import annotations

import io

import numpy as np
import pytest

import support
from gpt1cli.errors import Gpt1Error
from gpt1cli.fileio import file_hash
from gpt1cli.tokenizer.sentencepiece_bpe import MIN_VOCAB, SentencePieceTokenizer, train_sentencepiece


def test_special_ids_and_vocabulary(tok):
    assert tok.vocab_size == support.VOCAB
    assert (tok.pad_id, tok.eos_id, tok.start_id, tok.delim_id, tok.extract_id) == (0, 2, 3, 4, 5)
    assert tok.specials == {"pad": 0, "eos": 2, "start": 3, "delim": 4, "extract": 5}
    assert tok.kind == "sentencepiece"


def test_corpus_text_round_trips_and_is_compressed(tok, assets):
    n_tokens = n_bytes = 0
    for lines in assets.docs[:40]:
        for line in lines:
            ids = tok.encode(line)
            assert tok.decode(ids) == line
            assert all(6 <= i < tok.vocab_size for i in ids), "text never encodes to reserved ids"
            n_tokens += len(ids)
            n_bytes += len(line.encode())
    assert n_tokens < 0.65 * n_bytes, "BPE merges the corpus' frequent words"


def test_unseen_characters_fall_back_to_bytes(tok):
    text = "Grüße, 東京 – naïve 🙂 résumé"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert 1 not in ids  # no <unk>
    # Control symbols are never produced from text, even when the text spells them.
    spelled = tok.encode("<start> a <delim> b <extract> </s>")
    assert not {tok.start_id, tok.delim_id, tok.extract_id, tok.eos_id} & set(spelled)
    assert tok.encode_batch(["a cat", "the dog"], num_threads=1) == [tok.encode("a cat"), tok.encode("the dog")]


def test_training_is_reproducible(tmp_path, assets):
    sentences = [line for doc in assets.docs for line in doc]
    a = train_sentencepiece(iter(sentences), tmp_path / "a.model", 320, num_threads=1)
    b = train_sentencepiece(iter(sentences), tmp_path / "b.model", 320, num_threads=1)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a.vocab_size == b.vocab_size == 320
    assert a.encode("The old farmer sat quietly.") == b.encode("The old farmer sat quietly.")


def test_reusing_the_tokenizer_gives_identical_tokens(tmp_path, assets, capsys):
    out = tmp_path / "again"
    result = support.run_main(["tokenize", assets.corpus, "--out", out, "--tokenizer", assets.tokenizer,
                               "--tokens-per-shard", str(support.TOKENS_PER_SHARD),
                               "--val-fraction", str(support.VAL_FRACTION), "--seed", "0", "-q"], capsys)
    assert result.code == 0, result.err
    assert (out / "tokenizer.model").read_bytes() == assets.tokenizer.read_bytes()
    old, new = support.read_manifest(assets.shards), support.read_manifest(out)
    assert new["tokenizer"] == old["tokenizer"]
    assert new["splits"] == old["splits"]  # same shard files, sizes and hashes
    for split in ("train", "val"):
        assert np.array_equal(support.split_tokens(out, split), support.split_tokens(assets.shards, split))


def test_reusing_the_tokenizer_already_in_the_output_directory(tmp_path, assets, capsys):
    out = support.copy_shards(assets.shards, tmp_path / "s")
    result = support.run_main(["tokenize", assets.corpus, "--out", out, "--tokenizer", out / "tokenizer.model",
                               "--tokens-per-shard", "4000", "--overwrite", "-q"], capsys)
    assert result.code == 0, result.err
    manifest = support.read_manifest(out)
    assert manifest["tokenizer"]["blake2b"] == file_hash(assets.tokenizer)
    assert manifest["tokens_per_shard"] == 4000
    total = sum(support.read_manifest(assets.shards)["splits"][s]["tokens"] for s in ("train", "val"))
    assert manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"] == total


def test_a_file_that_is_not_a_sentencepiece_model_is_refused(tmp_path, assets, capsys):
    fake = tmp_path / "fake.model"
    fake.write_bytes(b"\x00\x01 definitely not a protobuf" * 10)
    result = support.run_main(["tokenize", assets.corpus, "--out", tmp_path / "o", "--tokenizer", fake, "-q"], capsys)
    support.assert_one_error_line(result, str(fake), "is not a SentencePiece model")
    assert not (tmp_path / "o" / "manifest.json").exists()
    result = support.run_main(["tokenize", assets.corpus, "--out", tmp_path / "o", "--tokenizer",
                               tmp_path / "missing.model", "-q"], capsys)
    support.assert_one_error_line(result, "tokenizer not found", str(tmp_path / "missing.model"))


def test_a_model_without_the_special_tokens_is_refused(tmp_path, assets):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(sentence_iterator=iter([line for doc in assets.docs for line in doc]),
                                   model_writer=model, model_type="bpe", vocab_size=120, minloglevel=2,
                                   num_threads=1)
    path = tmp_path / "plain.model"
    path.write_bytes(model.getvalue())
    with pytest.raises(Gpt1Error, match=r"lacks the special token <pad>"):
        SentencePieceTokenizer(path)


def test_vocabulary_below_the_minimum_is_refused_before_reading(tmp_path, assets, capsys):
    result = support.run_main(["tokenize", assets.corpus, "--out", tmp_path / "o", "--vocab-size", "100", "-q"], capsys)
    support.assert_one_error_line(result, "--vocab-size 100 is too small", f">= {MIN_VOCAB}")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_vocabulary_too_small_for_the_corpus_characters_advises_a_larger_one(tmp_path, capsys):
    """Above the minimum but below 256 bytes + specials + the corpus' characters: SentencePiece asks for more."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(chr(c) for c in range(0x3041, 0x3041 + 80)) + "\n", encoding="utf-8")
    result = support.run_main(["tokenize", corpus, "--out", tmp_path / "o", "--vocab-size", str(MIN_VOCAB), "-q"], capsys)
    line = support.assert_one_error_line(result, f"--vocab-size {MIN_VOCAB}")
    assert "try a smaller value" not in line, f"the advice points the wrong way: {line}"
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_a_device_fifo_or_directory_as_tokenizer_is_named_for_what_it_is(tmp_path, assets, capsys):
    import os
    import time

    fifo = tmp_path / "tok.model"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "not a regular file"), (tmp_path / "ft.json", "not a regular file"),
                       ("/dev/zero", "not a regular file"), (tmp_path, "a directory")):
        if str(path).endswith("ft.json"):
            os.mkfifo(path)  # the JSON loader would block reading it
        started = time.perf_counter()
        result = support.run_main(["tokenize", assets.corpus, "--out", tmp_path / "o", "--tokenizer", path, "-q"], capsys)
        assert time.perf_counter() - started < 10
        support.assert_one_error_line(result, f"tokenizer {path} is {kind}")
    assert not (tmp_path / "o").exists()


def test_bad_input_while_training_raises_its_own_error_and_writes_no_model(tmp_path):
    def sentences():
        yield from ["the cat sat on the mat"] * 2000
        raise Gpt1Error("bad.txt: invalid UTF-8 at byte 7")

    with pytest.raises(Gpt1Error, match="bad.txt: invalid UTF-8 at byte 7"):
        train_sentencepiece(sentences(), tmp_path / "t.model", 300, num_threads=1)
    assert not (tmp_path / "t.model").exists()
