"""Hardening of the data side: Ctrl-C, one writer per --out, exact resumption, untrusted manifests,
absurd settings, unusable outputs, odd text files, bounded memory and the streaming encoder."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import support
from gpt1cli.data import corpus as corpus_module
from gpt1cli.data import pipeline
from gpt1cli.data.corpus import BOM, expand_inputs, iter_documents, iter_text_batches
from gpt1cli.data.pipeline import tokenize_corpus
from gpt1cli.data.shards import ShardDataset, ShardWriter, token_dtype, write_shard
from gpt1cli.data.stream import iter_token_chunks
from gpt1cli.errors import Gpt1Error, Interrupted
from gpt1cli.fileio import file_hash
from gpt1cli.locking import exclusive_output
from gpt1cli.tokenizer.sentencepiece_bpe import SentencePieceTokenizer
from gpt1cli.verify import verify


def words_corpus(path: Path, n_bytes: int, seed: int = 0, doc_lines: int = 3) -> Path:
    """Documents of ``doc_lines`` lines of helper words, about ``n_bytes`` in all (written in blocks)."""
    rng = random.Random(seed)
    words = support.WORDS
    with open(path, "w", encoding="utf-8") as handle:
        written = 0
        while written < n_bytes:
            block = "\n\n".join("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(doc_lines))
                                for _ in range(500)) + "\n\n"
            handle.write(block)
            written += len(block)
    return path


def reference_shards(paths, tok, out: Path, *, tokens_per_shard: int, val_fraction: float, seed: int = 0) -> dict:
    """The splits the old one-document-at-a-time pipeline wrote (each line encoded, </s> per document)."""
    out.mkdir()
    dtype = token_dtype(tok.vocab_size)
    writers = {s: ShardWriter(out, s, dtype, tokens_per_shard) for s in ("train", "val")}
    rng = np.random.default_rng(seed)
    for document in iter_documents(paths):
        tokens = [t for line in document.lines for t in tok.encode(line)] + [tok.eos_id]
        writers["val" if rng.random() < val_fraction else "train"].add_document(tokens, document.n_bytes)
    for writer in writers.values():
        writer.close()
    return {s: w.summary() for s, w in writers.items()}


def shard_hashes(splits: dict) -> dict:
    return {s: [(x["file"], x["tokens"], x["blake2b"]) for x in splits[s]["shards"]] for s in ("train", "val")}


# ---------------------------------------------------------------------------------------------
# 1. Ctrl-C


class _BufferedSplit:
    """What a journal save reads from a split's shard writer."""

    shards: list = []

    def pending(self) -> np.ndarray:
        return np.arange(5, dtype=np.uint16)

    def summary(self) -> dict:
        return {"tokens": 5}


def test_ctrl_c_during_a_journal_save_is_acted_on_after_the_save(tmp_path, monkeypatch):
    """Seen in CI: SIGINT inside np.save surfaced as a TypeError traceback (exit 1), not exit 130."""
    journal = pipeline.Journal(tmp_path, {"vocab_size": 300})
    write_array = np.save

    def interrupted_write(handle, array):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of the save
        write_array(handle, array)

    monkeypatch.setattr(np, "save", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        journal.save(7, {"train": _BufferedSplit(), "val": _BufferedSplit()})
    state = json.loads((tmp_path / pipeline.JOURNAL).read_text())
    assert state["documents"] == 7 and set(state["pending"]) == {"train", "val"}
    for name in state["pending"].values():
        assert np.load(tmp_path / name).tolist() == [0, 1, 2, 3, 4]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_exits_130_with_one_line_and_the_same_command_resumes(tmp_path, assets):
    corpus = words_corpus(tmp_path / "corpus.txt", 5_000_000)  # batches of 2 MB: SIGINT lands mid-run
    out = tmp_path / "out"
    args = ["tokenize", corpus, "--out", out, "--tokenizer", assets.tokenizer, "--tokens-per-shard", "100000",
            "--val-fraction", "0.05", "--threads", "1", "-q"]
    with support.reaped(support.start_cli(*args, text=True)) as process:
        support.wait_for(lambda: (out / "train_00000.arrow").exists(), process, what="a first shard")
        assert process.poll() is None, "tokenize finished before it could be interrupted: use a bigger corpus"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 130, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"interrupted: no manifest written, {out} is not usable yet; "
                               "run the same command again to resume"), lines[0]
    assert not (out / "manifest.json").exists()
    journal = json.loads((out / ".tokenize-journal.json").read_text())

    support.assert_ok(support.run_subprocess(args))
    manifest = support.read_manifest(out)
    expected = tokenize_corpus([str(corpus)], tmp_path / "ref", tokenizer=assets.tokenizer, tokens_per_shard=100_000,
                               val_fraction=0.05, num_threads=2, show_progress=False)["splits"]
    assert shard_hashes(manifest["splits"]) == shard_hashes(expected)
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == \
        expected["train"]["documents"] + expected["val"]["documents"] >= journal["documents"]
    assert not (out / ".tokenize-journal.json").exists()


def test_ctrl_c_while_training_stops_at_once_and_says_to_start_over(tmp_path, monkeypatch):
    corpus = words_corpus(tmp_path / "c.txt", 200_000)
    real = pipeline._training_sentences

    def interrupted(*args):
        for number, sentence in enumerate(real(*args)):
            if number == 50:
                raise KeyboardInterrupt
            yield sentence

    monkeypatch.setattr(pipeline, "_training_sentences", interrupted)
    started = time.perf_counter()
    with pytest.raises(Interrupted) as info:
        tokenize_corpus([str(corpus)], tmp_path / "out", vocab_size=300, num_threads=1, show_progress=False)
    assert time.perf_counter() - started < 10
    assert info.value.state == (f"no manifest written, {tmp_path / 'out'} is not usable yet; "
                                "run the same command again to start over")
    assert not (tmp_path / "out" / "tokenizer.model").exists()


# ---------------------------------------------------------------------------------------------
# 2. One writer per --out


def test_a_second_tokenize_on_the_same_out_fails_at_once_naming_the_holder(tmp_path, assets):
    out = tmp_path / "out"
    with exclusive_output(out):
        started = time.perf_counter()
        result = support.run_subprocess(["tokenize", assets.corpus, "--out", out, "--tokenizer", assets.tokenizer, "-q"])
        assert time.perf_counter() - started < 30
    line = support.assert_one_error_line(result, f"--out directory {out} is in use by another gpt1 process",
                                         f"(PID {os.getpid()})")
    assert "wait for it to finish" in line
    assert sorted(p.name for p in out.iterdir()) == [".gpt1.lock"]


def test_the_lock_file_does_not_disturb_overwrite_or_verify(tmp_path, assets, capsys):
    out = tmp_path / "out"
    for extra in ([], ["--overwrite", "--tokens-per-shard", "700"]):
        result = support.run_main(["tokenize", assets.corpus, "--out", out, "--tokenizer", assets.tokenizer,
                                   "--threads", "1", "-q", *extra], capsys)
        assert result.code == 0, result.err
    assert (out / ".gpt1.lock").exists()
    manifest = support.read_manifest(out)
    listed = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
    assert {p.name for p in out.iterdir()} == listed | {"manifest.json", "tokenizer.model", ".gpt1.lock"}
    checks = verify(out)
    assert len(checks) == len(listed) + 1 and all(c.ok for c in checks)
    assert ShardDataset(out).train.tokens == manifest["splits"]["train"]["tokens"]


# ---------------------------------------------------------------------------------------------
# 3. Resuming only what matches


@pytest.fixture(scope="module")
def interrupted_template(tmp_path_factory):
    """A training run (vocab 300) interrupted after its second encoded batch: tokenizer, journal, shards."""
    root = tmp_path_factory.mktemp("interrupted")
    corpus = words_corpus(root / "corpus.txt", 150_000, seed=4)
    real, calls = pipeline._distribute, {"n": 0}

    def stop_later(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = root / "out"
    args = dict(vocab_size=300, tokens_per_shard=2000, val_fraction=0.1, num_threads=1, show_progress=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(corpus_module, "BATCH_BYTES", 20_000)
        patch.setattr(corpus_module, "READ_BYTES", 20_000)
        patch.setattr(pipeline, "_distribute", stop_later)
        with pytest.raises(Interrupted, match="run the same command again to resume from document"):
            tokenize_corpus([str(corpus)], out, **args)
    assert json.loads((out / ".tokenize-journal.json").read_text())["documents"] > 0
    assert len(list(out.glob("train_*.arrow"))) >= 2
    return corpus, out, args


@pytest.fixture
def interrupted_run(interrupted_template, tmp_path):
    """A copy of the interrupted run's --out (the corpus is shared: leave it as it is)."""
    corpus, out, args = interrupted_template
    return corpus, shutil.copytree(out, tmp_path / "out"), args


def test_a_rerun_with_other_settings_is_refused_naming_them(interrupted_run, capsys):
    corpus, out, args = interrupted_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    base = ["tokenize", corpus, "--out", out, "--tokens-per-shard", "2000", "--val-fraction", "0.1", "--threads", "1", "-q"]
    for extra, named in ((["--vocab-size", "320"], "--vocab-size was 300"),
                         (["--vocab-size", "300", "--seed", "5"], "--seed was 0"),
                         (["--vocab-size", "300", "--max-train-sentences", "10"], "--max-train-sentences was 1000000"),
                         (["--tokenizer", out / "tokenizer.model"], "it trained its tokenizer")):
        result = support.run_main([*base, *extra], capsys)
        support.assert_one_error_line(result, f"{out} holds an unfinished `gpt1 tokenize` run with other inputs or "
                                      f"settings ({named}): run that command again to resume it, or pass --overwrite")
    times = corpus.stat()
    os.utime(corpus, ns=(times.st_atime_ns, times.st_mtime_ns + 10**9))  # as if edited
    try:
        result = support.run_main([*base, "--vocab-size", "300"], capsys)
    finally:
        os.utime(corpus, ns=(times.st_atime_ns, times.st_mtime_ns))
    support.assert_one_error_line(result, "with other inputs or settings (corpus.txt changed since)")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_overwrite_starts_clean_with_the_new_settings(interrupted_run, capsys):
    corpus, out, args = interrupted_run
    old_tokenizer = (out / "tokenizer.model").read_bytes()
    result = support.run_main(["tokenize", corpus, "--out", out, "--vocab-size", "320", "--tokens-per-shard", "3000",
                               "--val-fraction", "0.1", "--threads", "1", "-q", "--overwrite"], capsys)
    assert result.code == 0, result.err
    manifest = support.read_manifest(out)
    assert manifest["tokenizer"]["vocab_size"] == 320
    assert (out / "tokenizer.model").read_bytes() != old_tokenizer
    listed = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
    assert {p.name for p in out.glob("*.arrow")} == listed
    assert all(s["tokens"] == 3000 for s in manifest["splits"]["train"]["shards"][:-1])
    expected = reference_shards([corpus.resolve()], SentencePieceTokenizer(out / "tokenizer.model"), out.parent / "ref",
                                tokens_per_shard=3000, val_fraction=0.1)
    assert shard_hashes(manifest["splits"]) == shard_hashes(expected)


def test_the_same_settings_resume_to_the_uninterrupted_result(interrupted_run):
    corpus, out, args = interrupted_run
    tokenizer = SentencePieceTokenizer(out / "tokenizer.model")
    manifest = tokenize_corpus([str(corpus)], out, **args)
    expected = reference_shards([corpus.resolve()], tokenizer, out.parent / "ref", tokens_per_shard=2000,
                                val_fraction=0.1)
    assert shard_hashes(manifest["splits"]) == shard_hashes(expected)
    assert manifest["tokenizer"]["blake2b"] == file_hash(out / "tokenizer.model") == tokenizer.hash()


def _edited(change):
    def edit(text: str) -> str:
        journal = json.loads(text)
        change(journal)
        return json.dumps(journal)
    return edit


def _documents_as(value: str):
    return lambda text: text.replace('"documents": ' + str(json.loads(text)["documents"]), '"documents": ' + value, 1)


@pytest.mark.parametrize("damage, reason", [
    (_edited(lambda j: j["splits"]["train"]["shards"][0].update(file="../train_00000.arrow")), "not a plain file name"),
    (_edited(lambda j: j["tokenizer"].update(file="/etc/passwd")), "not a plain file name"),
    (_edited(lambda j: j["pending"].update(train="../../x.npy")), "names the pending train tokens '../../x.npy'"),
    (_edited(lambda j: j["splits"]["val"].update(tokens=-1)), "val tokens must be at least 0"),
    (_edited(lambda j: j["splits"]["train"].update(tokens=j["splits"]["train"]["tokens"] + 1)), "do not add up"),
    (_documents_as("9" * 5000), "holds a value JSON cannot be read into"),
    (_documents_as("[" * 100_000 + "]" * 100_000), "nested too deeply"),
], ids=["shard-escape", "absolute-tokenizer", "pending-escape", "negative-count", "wrong-sum", "huge-int", "deep-nesting"])
def test_a_damaged_journal_is_refused_in_one_line(interrupted_run, capsys, damage, reason):
    corpus, out, args = interrupted_run
    path = out / ".tokenize-journal.json"
    path.write_text(damage(path.read_text()))
    base = ["tokenize", corpus, "--out", out, "--vocab-size", "300", "--tokens-per-shard", "2000",
            "--val-fraction", "0.1", "--threads", "1", "-q"]
    before = sorted(p.name for p in out.iterdir())
    support.assert_one_error_line(support.run_main(base, capsys),
                                  f"{out} holds an unfinished `gpt1 tokenize` run that cannot be resumed",
                                  reason, "pass --overwrite to start over")
    assert sorted(p.name for p in out.iterdir()) == before


def test_overwrite_replaces_a_damaged_journal(interrupted_run, capsys):
    corpus, out, args = interrupted_run
    (out / ".tokenize-journal.json").write_text("{" * 10)
    result = support.run_main(["tokenize", corpus, "--out", out, "--vocab-size", "300", "--tokens-per-shard", "2000",
                               "--val-fraction", "0.1", "--threads", "1", "-q", "--overwrite"], capsys)
    assert result.code == 0, result.err
    assert not (out / ".tokenize-journal.json").exists() and not list(out.glob(".tokenize-pending-*"))
    listed = {s["file"] for split in support.read_manifest(out)["splits"].values() for s in split["shards"]}
    assert {p.name for p in out.glob("*.arrow")} == listed


def test_leftover_shards_without_journal_or_manifest_are_not_adopted(tmp_path, assets, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_00007.arrow").write_bytes(b"stale")
    args = ["tokenize", assets.corpus, "--out", out, "--tokenizer", assets.tokenizer, "--threads", "1", "-q"]
    support.assert_one_error_line(support.run_main(args, capsys), "holds shard files but no manifest.json", "--overwrite")
    assert support.run_main([*args, "--overwrite"], capsys).code == 0
    assert not (out / "train_00007.arrow").exists()


# ---------------------------------------------------------------------------------------------
# 4. Untrusted manifests


@pytest.fixture
def shards(assets, tmp_path):
    return support.copy_shards(assets.shards, tmp_path / "shards")


def edit_manifest(directory: Path, change) -> None:
    manifest = support.read_manifest(directory)
    change(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["/etc/passwd", "../tokenizer.model", "sub/tokenizer.model", ".hidden", ".."])
def test_a_tokenizer_name_outside_the_folder_is_refused(shards, name):
    edit_manifest(shards, lambda m: m["tokenizer"].update(file=name))
    with pytest.raises(Gpt1Error, match="which is not a plain file name in its folder"):
        ShardDataset(shards)


@pytest.mark.parametrize("name", ["../train_00000.arrow", "/tmp/train_00000.arrow", "x/train_00000.arrow", ""])
def test_a_shard_name_outside_the_folder_is_refused(shards, name):
    outside = shards.parent / "train_00000.arrow"
    shutil.copy(shards / "train_00000.arrow", outside)
    edit_manifest(shards, lambda m: m["splits"]["train"]["shards"][0].update(file=name))
    with pytest.raises(Gpt1Error, match="which is not a plain file name in its folder"):
        ShardDataset(shards)


def test_a_swapped_tokenizer_is_refused_on_open(shards, tmp_path, capsys):
    other = tmp_path / "other"
    made = support.run_main(["tokenize", support.write_txt(tmp_path / "c.txt", support.make_documents(40, seed=8)),
                             "--out", other, "--vocab-size", "350", "--threads", "1", "-q"], capsys)
    assert made.code == 0, made.err
    shutil.copy(other / "tokenizer.model", shards / "tokenizer.model")
    with pytest.raises(Gpt1Error, match=r"tokenizer.model is not the one these shards were made with"):
        ShardDataset(shards)
    result = support.run_main(["pretrain", "--shards", shards, "--out", tmp_path / "run", "--steps", "1", "-q"], capsys)
    support.assert_one_error_line(result, "is not the one these shards were made with")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_deleted_tokenizer_fails_at_open(shards):
    (shards / "tokenizer.model").unlink()
    with pytest.raises(Gpt1Error, match=rf"{shards} lacks its tokenizer tokenizer.model"):
        ShardDataset(shards)


def _replace_first_shard(directory: Path, tokens: np.ndarray, record_max: bool) -> None:
    path = directory / "train_00000.arrow"
    size, digest = write_shard(path, tokens)

    def change(manifest):
        entry = manifest["splits"]["train"]["shards"][0]
        manifest["splits"]["train"]["tokens"] += len(tokens) - entry["tokens"]
        entry.update(tokens=len(tokens), bytes=size, blake2b=digest)
        if record_max:
            entry["max_token"] = int(tokens.max())
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                if not record_max:
                    shard.pop("max_token", None)

    edit_manifest(directory, change)


@pytest.mark.parametrize("record_max", [True, False], ids=["recorded", "old-manifest"])
def test_token_ids_outside_the_vocabulary_are_refused_on_open(shards, record_max):
    tokens = np.arange(1000, dtype=np.uint16) % 300
    tokens[500] = support.VOCAB + 7
    _replace_first_shard(shards, tokens, record_max)
    with pytest.raises(Gpt1Error, match=rf"train_00000.arrow holds token id {support.VOCAB + 7}, outside the "
                                        rf"vocabulary of {support.VOCAB}"):
        ShardDataset(shards)


def test_a_manifest_without_max_token_still_opens(shards):
    tokens = np.arange(1000, dtype=np.uint16) % support.VOCAB
    _replace_first_shard(shards, tokens, record_max=False)
    data = ShardDataset(shards)
    assert np.array_equal(data.train.arrays[0], tokens)


def test_max_token_is_recorded_per_shard(assets):
    import pyarrow as pa

    manifest = support.read_manifest(assets.shards)
    for split in ("train", "val"):
        for shard in manifest["splits"][split]["shards"]:
            with pa.memory_map(str(assets.shards / shard["file"])) as source:
                column = pa.ipc.open_file(source).get_batch(0).column(0).to_numpy()
            assert shard["max_token"] == int(column.max())


@pytest.mark.parametrize("field, value, message", [
    (("tokenizer", "vocab_size"), 10**9, "is out of range: tokenizer.vocab_size must be at most"),
    (("tokenizer", "vocab_size"), 300, "gives a vocabulary of 300; its tokenizer tokenizer.model has 400"),
    (("tokenizer", "vocab_size"), 400.0, "not a whole number"),
    (("tokenizer", "vocab_size"), True, "not a whole number"),
    (("dtype",), "float64", "gives the token type as 'float64'"),
    (("splits", "train", "text_bytes"), -5, "train.text_bytes must be at least 0"),
    (("splits", "train", "tokens"), 12, "says the train split has 12 tokens"),
    (("val_fraction",), float("nan"), "gives val_fraction as nan"),
    (("tokens_per_shard",), float("inf"), "gives tokens_per_shard as inf"),
    (("version",), 2, "has shard format version 2"),
])
def test_absurd_manifest_numbers_are_refused(shards, field, value, message):
    def change(manifest):
        target = manifest
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value

    edit_manifest(shards, change)
    with pytest.raises(Gpt1Error) as info:
        ShardDataset(shards)
    assert message in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# 5. Absurd settings


@pytest.mark.parametrize("option, value", [
    ("--tokens-per-shard", str(10**12)), ("--threads", "-1"), ("--seed", "-1"), ("--max-train-sentences", "-1"),
    ("--vocab-size", str(10**9)), ("--threads", "5000"),
])
def test_absurd_options_are_refused_when_parsed(tmp_path, assets, capsys, option, value):
    result = support.run_main(["tokenize", assets.corpus, "--out", tmp_path / "out", option, value, "-q"], capsys)
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip().splitlines() == [result.err.strip()] and result.err.startswith(f"error: {option} ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-0.5", "1.5"])
def test_non_finite_or_out_of_range_val_fraction(tmp_path, assets, capsys, value):
    result = support.run_main(["tokenize", assets.corpus, "--out", tmp_path / "out", "--val-fraction", value, "-q"], capsys)
    support.assert_one_error_line(result, "--val-fraction must be between 0 and 1 (exclusive)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting, message", [
    (dict(tokens_per_shard=10**12), "--tokens-per-shard must be at most 2147483648"),
    (dict(tokens_per_shard=2.5), "--tokens-per-shard must be a whole number"),
    (dict(num_threads=-1), "--threads must be at least 0"),
    (dict(seed=-1), "--seed must be at least 0"),
    (dict(seed=2**64), "--seed must be at most"),
    (dict(max_train_sentences=0), "--max-train-sentences must be at least 1"),
    (dict(vocab_size=True), "--vocab-size must be a whole number"),
    (dict(vocab_size=10**9), "--vocab-size 1000000000 is too large"),
    (dict(val_fraction=float("nan")), "--val-fraction must be between 0 and 1"),
    (dict(errors="ignore"), "--errors must be strict or replace"),
])
def test_absurd_settings_from_python_are_refused_before_anything_is_made(tmp_path, assets, setting, message):
    with pytest.raises(Gpt1Error, match=message.replace("(", r"\(")):
        tokenize_corpus([str(assets.corpus)], tmp_path / "out", show_progress=False, **setting)
    assert not (tmp_path / "out").exists()


def test_a_large_shard_size_costs_no_memory_up_front(tmp_path, assets):
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint32), 1 << 31)
    assert writer.pending().nbytes == 0 and writer._buffer.nbytes <= 4 << 20
    manifest = tokenize_corpus([str(assets.corpus)], tmp_path / "out", tokenizer=assets.tokenizer,
                               tokens_per_shard=1 << 31, num_threads=1, show_progress=False)
    assert [len(manifest["splits"][s]["shards"]) for s in ("train", "val")] == [1, 1]


# ---------------------------------------------------------------------------------------------
# 6. Unusable output directories


def test_an_out_that_is_a_file(tmp_path, assets, capsys):
    target = tmp_path / "file.txt"
    target.write_text("not a directory")
    args = ["--tokenizer", assets.tokenizer, "-q"]
    result = support.run_main(["tokenize", assets.corpus, "--out", target, *args], capsys)
    support.assert_one_error_line(result, f"--out directory {target} exists and is not a directory")
    result = support.run_main(["tokenize", assets.corpus, "--out", target / "sub", *args], capsys)
    support.assert_one_error_line(result, f"cannot write to --out directory {target / 'sub'}", "writable directory")
    assert target.read_text() == "not a directory"


def test_an_out_that_cannot_be_written(tmp_path, assets, capsys):
    if os.geteuid() == 0:  # chmod does not stop root: a place no one may create files in
        target = Path("/sys/gpt1-hardening-test")
        if not Path("/sys").is_dir():
            pytest.skip("no /sys")
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        target = tmp_path / "ro" / "out"
    result = support.run_main(["tokenize", assets.corpus, "--out", target, "--tokenizer", assets.tokenizer, "-q"], capsys)
    support.assert_one_error_line(result, f"cannot write to --out directory {target}", "check it is a writable directory")


# ---------------------------------------------------------------------------------------------
# 7. Text edge cases


def test_a_bom_is_not_text(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_bytes(BOM + "first line\nsecond\n\nnext doc\n".encode())
    documents = list(iter_documents([txt]))
    assert [d.lines for d in documents] == [["first line", "second"], ["next doc"]]
    assert [d.n_bytes for d in documents] == [len(b"first line\nsecond\n"), len(b"next doc\n")]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(BOM + b'{"text": "one"}\n{"text": "two"}\n')
    assert [d.lines for d in iter_documents([jsonl])] == [["one"], ["two"]]
    bad = tmp_path / "b.txt"
    bad.write_bytes(BOM + b"ok\n\xff\n")
    with pytest.raises(Gpt1Error, match=r"invalid UTF-8 at byte 6;"):  # file offsets count the BOM
        list(iter_documents([bad]))


def test_special_files_are_named_for_what_they_are(tmp_path, assets, capsys):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for path, kind in ((Path("/dev/zero"), "a character device"), (fifo, "a named pipe (FIFO)")):
        started = time.perf_counter()
        result = support.run_main(["tokenize", path, "--out", tmp_path / "out", "--tokenizer", assets.tokenizer, "-q"],
                                  capsys)
        assert time.perf_counter() - started < 10
        support.assert_one_error_line(result, f"input {path} is {kind}, not a regular file")
    assert not (tmp_path / "out").exists()


def test_a_fifo_swapped_in_after_listing_is_refused_without_blocking(tmp_path):
    path = tmp_path / "late.txt"
    path.write_text("text\n")
    listed = expand_inputs([str(path)])
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(Gpt1Error, match="is a named pipe"):
        list(iter_text_batches(listed))


def test_suffixes_are_matched_without_regard_to_case(tmp_path, assets, capsys):
    docs = support.make_documents(12, seed=21)
    support.write_txt(tmp_path / "d" / "A.TXT", docs[:4])
    support.write_jsonl(tmp_path / "d" / "B.JSONL", docs[4:8])
    support.write_parquet(tmp_path / "d" / "C.Parquet", docs[8:])
    found = expand_inputs([str(tmp_path / "d")])
    assert [p.name for p in found] == ["A.TXT", "B.JSONL", "C.Parquet"]
    assert [d.lines for d in iter_documents(found)] == docs
    named = expand_inputs([str(tmp_path / "d" / "B.JSONL")])
    assert [d.lines for d in iter_documents(named)] == docs[4:8]
    from gpt1cli.tokenizer import load_tokenizer

    upper = tmp_path / "TOK.JSON"
    upper.write_text("{}")
    with pytest.raises(Gpt1Error, match="is not an OpenAI BPE tokenizer file"):
        load_tokenizer(upper)


@pytest.mark.parametrize("line, reason", [
    ('{"text": "a", "n": ' + "7" * 5000 + "}", "holds a value JSON cannot be read into"),
    ('{"text": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
    ("[" * 50_000, "nested too deeply"),
])
def test_json_bombs_in_a_jsonl_corpus_name_file_and_line(tmp_path, assets, capsys, line, reason):
    path = tmp_path / "bomb.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    result = support.run_main(["tokenize", path, "--out", tmp_path / "out", "--tokenizer", assets.tokenizer, "-q"], capsys)
    support.assert_one_error_line(result, f"{path}:2: {reason}", "each line must be a JSON object")


# ---------------------------------------------------------------------------------------------
# 8. Long lines and bounded memory


def test_a_long_line_streams_in_pieces_with_the_same_tokens(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(corpus_module, "LONG_LINE_BYTES", 2000)
    monkeypatch.setattr(corpus_module, "READ_BYTES", 1500)
    monkeypatch.setattr(corpus_module, "BATCH_BYTES", 3000)
    rng = random.Random(5)
    line = " ".join(rng.choice(support.WORDS) for _ in range(6000))
    other = "A short line after it."
    path = tmp_path / "long.txt"
    path.write_text(f"Before.\n\n{line}\n{other}\n\nLast document.\n")
    batches = list(iter_text_batches([path]))
    assert len(batches) > 5 and max(len(t.encode()) for b in batches for t in b.texts) <= 2000
    documents = list(iter_documents([path]))
    assert [d.n_bytes for d in documents] == [len("Before.\n"), len(line) + 1 + len(other) + 1, len("Last document.\n")]
    assert " ".join(documents[1].lines) == f"{line} {other}"
    # Cut at spaces, the pieces encode to exactly the tokens of the whole line.
    out = tmp_path / "out"
    tokenize_corpus([str(path)], out, tokenizer=tok.path, tokens_per_shard=500, val_fraction=0.01, num_threads=1,
                    show_progress=False)
    stream = np.concatenate([support.split_tokens(out, "train"), support.split_tokens(out, "val")]).tolist()
    expected = [tok.encode("Before."), tok.encode(line) + tok.encode(other), tok.encode("Last document.")]
    assert sorted(stream[i:j + 1] for i, j in _documents(stream, tok.eos_id)) == sorted(e + [tok.eos_id] for e in expected)


def _documents(stream, eos):
    start = 0
    for index, token in enumerate(stream):
        if token == eos:
            yield start, index
            start = index + 1


def test_long_jsonl_text_and_words_longer_than_a_piece(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "LONG_LINE_BYTES", 64)
    text = "word " * 40 + "é" * 100 + "\n\nend"
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    (batch,) = list(iter_text_batches([path]))
    assert all(len(t.encode()) <= 64 for t in batch.texts)
    assert "".join(t.replace(" ", "") for t in batch.texts) == text.replace(" ", "").replace("\n", "")
    assert sum(batch.sizes) == batch.doc_bytes[0] == len(text.encode())


# A child's ru_maxrss starts from its parent's peak (the exec'd process inherits the high-water
# mark), so a small launcher process runs the command and reports it, not this big test process.
_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-m", "gpt1cli", *sys.argv[1:]], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _peak_rss_mb(args: list[str]) -> tuple[int, float, str]:
    """Exit code, peak RSS in MB (ru_maxrss is in KiB on Linux) and stderr of ``gpt1 ARGS``."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, *args], env=support.cli_env(), capture_output=True,
                          text=True, timeout=600)
    code, peak = done.stdout.split()
    return int(code), int(peak) / 1024, done.stderr


def _one_line_document(path: Path, n_bytes: int) -> Path:
    rng = random.Random(9)
    with open(path, "w") as handle:
        written = 0
        while written < n_bytes:
            block = " ".join(rng.choices(support.WORDS, k=50_000)) + " "
            handle.write(block)
            written += len(block)
        handle.write("end\n")
    return path


def test_an_8_mb_line_is_tokenized_in_bounded_memory(tmp_path, assets):
    """The old reader held the line whole and SentencePiece took ~30 bytes per byte of it (610 MB here; now 400)."""
    path = _one_line_document(tmp_path / "line.txt", 8_000_000)
    code, peak, err = _peak_rss_mb(["tokenize", str(path), "--out", str(tmp_path / "out"), "--tokenizer",
                                    str(assets.tokenizer), "--threads", "2", "-q"])
    assert code == 0, err
    assert peak < 520, f"peak RSS {peak:.0f} MB"
    manifest = support.read_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["documents"] == 1 and manifest["splits"]["val"]["tokens"] >= 2
    assert manifest["splits"]["train"]["text_bytes"] + manifest["splits"]["val"]["text_bytes"] == path.stat().st_size


@pytest.mark.slow
def test_a_50_mb_line_is_tokenized_under_700_mb(tmp_path, assets):
    path = _one_line_document(tmp_path / "line.txt", 50_000_000)
    code, peak, err = _peak_rss_mb(["tokenize", str(path), "--out", str(tmp_path / "out"), "--tokenizer",
                                    str(assets.tokenizer), "-q"])
    assert code == 0, err
    print(f"peak RSS for a 50 MB one-line document: {peak:.0f} MB")
    assert peak < 700, f"peak RSS {peak:.0f} MB"


# ---------------------------------------------------------------------------------------------
# 9. The overlapped pipeline writes exactly what the one-document-at-a-time one did


def test_batched_encoding_writes_the_shards_of_the_one_document_pipeline(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(corpus_module, "READ_BYTES", 777)  # many batches, documents cut across them
    monkeypatch.setattr(corpus_module, "BATCH_BYTES", 1500)
    docs = support.make_documents(300, seed=31)
    files = [support.write_txt(tmp_path / "a.txt", docs[:120]), support.write_jsonl(tmp_path / "b.jsonl", docs[120:200]),
             support.write_parquet(tmp_path / "c.parquet", docs[200:]),
             support.write_txt(tmp_path / "d.txt", docs[:3])]
    (tmp_path / "a.txt").write_bytes((tmp_path / "a.txt").read_bytes().replace(b"\n\n", b"\r\n \t\n\x00\n", 9))
    manifest = tokenize_corpus([str(f) for f in files], tmp_path / "out", tokenizer=tok.path, tokens_per_shard=700,
                               val_fraction=0.2, seed=3, num_threads=2, show_progress=False)
    expected = reference_shards([f.resolve() for f in files], tok, tmp_path / "ref", tokens_per_shard=700,
                                val_fraction=0.2, seed=3)
    for split in ("train", "val"):
        for key in ("tokens", "documents", "text_bytes"):
            assert manifest["splits"][split][key] == expected[split][key], (split, key)
    assert shard_hashes(manifest["splits"]) == shard_hashes(expected)


# ---------------------------------------------------------------------------------------------
# Streaming token chunks (for `gpt1 eval --text`)


def test_iter_token_chunks_streams_documents_with_their_bytes(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(corpus_module, "READ_BYTES", 500)
    monkeypatch.setattr(corpus_module, "BATCH_BYTES", 800)
    docs = support.make_documents(60, seed=41)
    path = support.write_txt(tmp_path / "c.txt", docs)
    expected = [t for d in docs for t in [*[x for line in d for x in tok.encode(line)], tok.eos_id]]
    seen = []
    chunks = list(iter_token_chunks([path], tok, chunk_tokens=100, progress=lambda t, b: seen.append((t, b))))
    assert [len(c.tokens) for c in chunks[:-1]] == [100] * (len(chunks) - 1) and 0 < len(chunks[-1].tokens) <= 100
    assert np.concatenate([c.tokens for c in chunks]).tolist() == expected
    assert chunks[0].tokens.dtype == np.int64
    total_bytes = sum(d.n_bytes for d in iter_documents([path]))
    assert sum(c.text_bytes for c in chunks) == pytest.approx(total_bytes)
    assert all(c.text_bytes > 0 for c in chunks)
    assert seen[-1] == (len(expected), path.stat().st_size) and seen == sorted(seen)

    capped = list(iter_token_chunks([path], tok, chunk_tokens=64, max_tokens=150))
    assert [len(c.tokens) for c in capped] == [64, 64, 22]
    assert np.concatenate([c.tokens for c in capped]).tolist() == expected[:150]
    assert 0 < sum(c.text_bytes for c in capped) < total_bytes
    assert list(iter_token_chunks([path], tok, max_tokens=0)) == []
    with pytest.raises(Gpt1Error, match="chunk_tokens must be at least 1"):
        list(iter_token_chunks([path], tok, chunk_tokens=0))
