"""Bad input: one clear `error:` line naming the culprit, exit code 2, no traceback, nothing half-written.

Corrupt checkpoints are covered in tests/test_checkpoint.py, bad tokenizer files in
tests/tokenizer/test_sentencepiece_bpe.py.
"""

from __future__ import annotations

import os

import pytest

import support


def tokenize(capsys, inputs, out, *extra, train=True, assets=None):
    """``gpt1 tokenize``; ``train=False`` reuses the session tokenizer (skips SentencePiece training)."""
    args = ["tokenize", *inputs, "--out", out, "--threads", "1", "-q", *extra]
    args += ["--vocab-size", "300"] if train else ["--tokenizer", assets.tokenizer]
    return support.run_main(args, capsys)


def assert_no_manifest(out):
    assert not (out / "manifest.json").exists(), "a failed tokenize left a directory that looks complete"


# ---------------------------------------------------------------------------------------------
# tokenize: inputs


@pytest.mark.parametrize("train", [True, False], ids=["train-tokenizer", "reuse-tokenizer"])
def test_missing_input_file(tmp_path, assets, capsys, train):
    missing = tmp_path / "nope.txt"
    result = tokenize(capsys, [missing], tmp_path / "out", train=train, assets=assets)
    support.assert_one_error_line(result, "input not found", str(missing))
    assert_no_manifest(tmp_path / "out")


def test_missing_input_through_a_real_process(tmp_path):
    missing = tmp_path / "absent.jsonl"
    result = support.run_subprocess(["tokenize", missing, "--out", tmp_path / "out", "-q"])
    support.assert_one_error_line(result, "input not found", str(missing))
    assert_no_manifest(tmp_path / "out")


def test_unreadable_file_by_permissions(tmp_path, assets, capsys):
    path = support.write_txt(tmp_path / "secret.txt", support.make_documents(3))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop root from reading (see the emulated test below)")
        result = tokenize(capsys, [path], tmp_path / "out", train=False, assets=assets)
        support.assert_one_error_line(result, str(path), "not readable")
        assert_no_manifest(tmp_path / "out")
    finally:
        path.chmod(0o644)


def test_unreadable_file_emulated_permission_check(tmp_path, assets, capsys, monkeypatch):
    """As root, chmod 000 cannot be tested; emulate the permission check failing for this one file."""
    path = support.write_txt(tmp_path / "secret.txt", support.make_documents(3))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == os.fspath(path)
                        else real_access(p, mode, **kw))
    result = tokenize(capsys, [path], tmp_path / "out", train=False, assets=assets)
    support.assert_one_error_line(result, str(path), "not readable", "permissions")
    assert_no_manifest(tmp_path / "out")


@pytest.mark.parametrize("train", [True, False], ids=["train-tokenizer", "reuse-tokenizer"])
def test_file_that_fails_to_open_while_reading(tmp_path, assets, capsys, monkeypatch, train):
    """A file that passes the listing but cannot be opened (permissions changed, I/O error, NFS)."""
    import builtins

    import gpt1cli.data.corpus as corpus

    path = support.write_txt(tmp_path / "flaky.txt", support.make_documents(3))

    def failing_open(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path.resolve()):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(corpus, "open", failing_open, raising=False)
    result = tokenize(capsys, [path], tmp_path / "out", train=train, assets=assets)
    support.assert_one_error_line(result, str(path))
    assert_no_manifest(tmp_path / "out")


@pytest.mark.parametrize("content", [b"", b"   \n\n\t \n  \r\n"], ids=["empty", "whitespace-only"])
@pytest.mark.parametrize("train", [True, False], ids=["train-tokenizer", "reuse-tokenizer"])
def test_empty_corpus(tmp_path, assets, capsys, content, train):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    result = tokenize(capsys, [path], tmp_path / "out", train=train, assets=assets)
    support.assert_one_error_line(result, "the corpus is empty")
    assert_no_manifest(tmp_path / "out")


def test_empty_jsonl_texts_and_parquet_rows(tmp_path, assets, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text('{"text": ""}\n{"text": "  "}\n', encoding="utf-8")
    pq.write_table(pa.table({"text": [None, " "]}), tmp_path / "d" / "b.parquet")
    result = tokenize(capsys, [tmp_path / "d"], tmp_path / "out", train=False, assets=assets)
    support.assert_one_error_line(result, "the corpus is empty: 2 file(s) hold no text")
    assert_no_manifest(tmp_path / "out")


@pytest.mark.parametrize("train", [True, False], ids=["train-tokenizer", "reuse-tokenizer"])
def test_invalid_utf8_names_file_and_offset(tmp_path, assets, capsys, train):
    good = support.write_txt(tmp_path / "good.txt", support.make_documents(20, seed=3))
    bad = tmp_path / "bad.txt"
    prefix = b"A fine first line.\n\nThen a broken "
    bad.write_bytes(prefix + b"\xc3\x28 sequence here.\n")
    result = tokenize(capsys, [good, bad], tmp_path / "out", train=train, assets=assets)
    support.assert_one_error_line(result, str(bad), f"invalid UTF-8 at byte {len(prefix)}", "--errors replace")
    assert_no_manifest(tmp_path / "out")


def test_invalid_utf8_with_errors_replace_succeeds(tmp_path, assets, capsys):
    from gpt1cli.tokenizer.sentencepiece_bpe import SentencePieceTokenizer

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"The cat sat \xff on the mat.\n\nThe dog ran.\n")
    result = tokenize(capsys, [bad], tmp_path / "out", "--errors", "replace", train=False, assets=assets)
    assert result.code == 0, result.err
    tokens = [*support.split_tokens(tmp_path / "out", "train"), *support.split_tokens(tmp_path / "out", "val")]
    text = SentencePieceTokenizer(assets.tokenizer).decode(tokens)
    assert "The cat sat \ufffd on the mat." in text and "The dog ran." in text


def test_unknown_errors_mode(tmp_path, assets, capsys):
    path = support.write_txt(tmp_path / "a.txt", support.make_documents(3))
    result = tokenize(capsys, [path], tmp_path / "out", "--errors", "ignore", train=False, assets=assets)
    support.assert_one_error_line(result, "--errors must be strict or replace", "'ignore'")


@pytest.mark.parametrize("train", [True, False], ids=["train-tokenizer", "reuse-tokenizer"])
def test_jsonl_line_without_text(tmp_path, assets, capsys, train):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "The cat sat."}\n{"text": "The dog ran."}\n{"content": "no text field"}\n', encoding="utf-8")
    result = tokenize(capsys, [path], tmp_path / "out", train=train, assets=assets)
    support.assert_one_error_line(result, f"{path}:3", "missing the 'text' field")
    assert_no_manifest(tmp_path / "out")


def test_parquet_that_is_not_parquet(tmp_path, assets, capsys):
    path = tmp_path / "fake.parquet"
    path.write_bytes(b"PAR1 but not really" * 4)
    result = tokenize(capsys, [path], tmp_path / "out", train=False, assets=assets)
    support.assert_one_error_line(result, str(path), "not a readable Parquet file")


@pytest.mark.parametrize("pattern", ["corpus-[ab]*.txt", "corpus-[/ab]*.txt"], ids=["brackets", "closing-tag"])
def test_error_text_is_printed_verbatim(tmp_path, assets, capsys, pattern):
    """Paths and patterns may hold [brackets]: the message must show them, not read them as markup."""
    item = str(tmp_path / pattern)
    result = tokenize(capsys, [item], tmp_path / "out", train=False, assets=assets)
    support.assert_one_error_line(result, f"the pattern {item} matches no file")


# ---------------------------------------------------------------------------------------------
# tokenize: settings and existing output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--val-fraction", "0"], "--val-fraction must be between 0 and 1"),
        (["--val-fraction", "1"], "--val-fraction must be between 0 and 1"),
        (["--vocab-size", "10"], "--vocab-size 10 is too small"),
    ],
)
def test_bad_tokenize_settings(tmp_path, assets, capsys, extra, message):
    result = support.run_main(["tokenize", assets.corpus, "--out", tmp_path / "out", "-q", *extra], capsys)
    support.assert_one_error_line(result, message)
    assert_no_manifest(tmp_path / "out")


def test_bad_shard_size_is_refused_before_training_the_tokenizer(tmp_path, assets, capsys):
    """Settings are checked up front, not after minutes of tokenizer training."""
    result = support.run_main(["tokenize", assets.corpus, "--out", tmp_path / "out", "--vocab-size", "300",
                               "--tokens-per-shard", "0", "-q"], capsys)
    support.assert_one_error_line(result, "--tokens-per-shard must be positive, got 0")
    assert_no_manifest(tmp_path / "out")
    assert not (tmp_path / "out" / "tokenizer.model").exists(), "the tokenizer was trained before the check"


def test_existing_shards_are_not_replaced_without_overwrite(tmp_path, assets, capsys):
    out = support.copy_shards(assets.shards, tmp_path / "s")
    before = (out / "manifest.json").read_bytes()
    result = tokenize(capsys, [assets.corpus], out, train=False, assets=assets)
    support.assert_one_error_line(result, str(out), "already holds shards", "--overwrite")
    assert (out / "manifest.json").read_bytes() == before


def test_a_failed_overwrite_does_not_leave_the_old_manifest(tmp_path, assets, capsys):
    out = support.copy_shards(assets.shards, tmp_path / "s")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Fine text here.\n\n\xff\xfe broken\n")
    result = tokenize(capsys, [bad], out, "--overwrite", train=False, assets=assets)
    support.assert_one_error_line(result, str(bad), "invalid UTF-8")
    assert_no_manifest(out)
    # and pretrain refuses the unfinished directory
    result = support.run_main(["pretrain", "--shards", out, "--out", tmp_path / "run", "-q"], capsys)
    support.assert_one_error_line(result, str(out), "no manifest.json", "not a finished")


# ---------------------------------------------------------------------------------------------
# pretrain: shards and settings


def _pretrain(capsys, shards, out, *extra):
    return support.run_main(["pretrain", "--shards", shards, "--out", out, "--n-ctx", "32", "--steps", "2",
                             "--batch-size", "2", "--device", "cpu", "-q", *extra], capsys)


def assert_no_run(out):
    assert not (out / "checkpoints").exists()
    assert not (out / "metrics.jsonl").exists()


def test_truncated_shard_is_named(tmp_path, assets, capsys):
    shards = support.copy_shards(assets.shards, tmp_path / "s")
    shard = shards / "train_00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    result = _pretrain(capsys, shards, tmp_path / "run")
    support.assert_one_error_line(result, str(shard), "truncated", "gpt1 tokenize")
    assert_no_run(tmp_path / "run")


def test_shard_with_a_damaged_footer_is_named(tmp_path, assets, capsys):
    shards = support.copy_shards(assets.shards, tmp_path / "s")
    shard = shards / "train_00002.arrow"
    data = bytearray(shard.read_bytes())
    data[-40:] = bytes(40)  # same size, footer zeroed
    shard.write_bytes(bytes(data))
    result = _pretrain(capsys, shards, tmp_path / "run")
    support.assert_one_error_line(result, str(shard), "is corrupt")
    assert_no_run(tmp_path / "run")


def test_missing_shard_is_named(tmp_path, assets, capsys):
    shards = support.copy_shards(assets.shards, tmp_path / "s")
    (shards / "val_00000.arrow").unlink()
    result = _pretrain(capsys, shards, tmp_path / "run")
    support.assert_one_error_line(result, "shard missing", str(shards / "val_00000.arrow"))


def test_truncated_manifest_is_named(tmp_path, assets, capsys):
    shards = support.copy_shards(assets.shards, tmp_path / "s")
    manifest = shards / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    result = _pretrain(capsys, shards, tmp_path / "run")
    support.assert_one_error_line(result, str(manifest), "not valid JSON")


def test_missing_shard_directory(tmp_path, capsys):
    result = _pretrain(capsys, tmp_path / "no-shards", tmp_path / "run")
    support.assert_one_error_line(result, "shard directory not found", str(tmp_path / "no-shards"))


def test_context_longer_than_the_data(tmp_path, assets, capsys):
    result = _pretrain(capsys, assets.shards, tmp_path / "run", "--n-ctx", "100000")
    support.assert_one_error_line(result, "the train split has", "fewer than one window of 100001")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps must be positive, got 0"),
        (["--steps", "-3"], "--steps must be positive, got -3"),
        (["--batch-size", "0"], "--batch-size must be positive, got 0"),
        (["--batch-size", "-2"], "--batch-size must be positive, got -2"),
        (["--batch-size", "3", "--grad-accum", "2"], "--batch-size 3 must be divisible by --grad-accum 2"),
        (["--lr", "0"], "--lr must be positive"),
        (["--stop-after", "0"], "--stop-after must be positive"),
        (["--keep", "0"], "--keep must be at least 1"),
        (["--preset", "giant"], "unknown preset 'giant'"),
        (["--arch", "gpt3"], "unknown architecture 'gpt3'"),
        (["--dropout", "1.5"], "dropout must be in [0, 1)"),
    ],
)
def test_bad_pretrain_settings(tmp_path, assets, capsys, extra, message):
    result = _pretrain(capsys, assets.shards, tmp_path / "run", *extra)
    support.assert_one_error_line(result, message)
    assert_no_run(tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# generate


def test_prompt_longer_than_the_context(assets, capsys):
    prompt = " ".join(["The old farmer sat quietly"] * 40)
    result = support.run_main(["generate", "--ckpt", assets.run, "--prompt", prompt, "--max-new-tokens", "5",
                               "--device", "cpu"], capsys)
    support.assert_one_error_line(result, "the model's context is 32", "shorten the prompt")


def test_empty_prompt(assets, capsys):
    result = support.run_main(["generate", "--ckpt", assets.run, "--prompt", "", "--device", "cpu"], capsys)
    support.assert_one_error_line(result, "the prompt is empty")


@pytest.mark.parametrize(
    "argv, named",
    [
        (["generate", "--prompt", "hi"], "--ckpt"),
        (["pretrain", "--shards", "s", "--out", "o", "--steps", "many"], "--steps"),
        (["tokenize", "a.txt", "--out", "o", "--no-such-option"], "--no-such-option"),
        (["frobnicate"], "frobnicate"),
    ],
    ids=["missing-option", "not-an-integer", "unknown-option", "unknown-command"],
)
def test_usage_errors_exit_2_without_a_traceback(capsys, argv, named):
    result = support.run_main(argv, capsys)
    assert result.code == 2, result.err[-600:]
    assert "Traceback" not in result.err
    assert named in result.err


def test_usage_error_through_a_real_process(tmp_path):
    result = support.run_subprocess(["pretrain", "--shards", tmp_path, "--out", tmp_path / "o", "--steps", "many"])
    assert result.code == 2, result.err[-600:]
    assert "Traceback" not in result.err
    assert "--steps" in result.err
