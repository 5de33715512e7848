"""Writing Arrow shards: the manifest against the files, token streams, file modes, --overwrite."""

from __future__ import annotations

import os
import stat

import numpy as np

import support
from gpt1cli.fileio import file_hash
from gpt1cli.tokenizer.sentencepiece_bpe import SentencePieceTokenizer


# ---------------------------------------------------------------------------------------------
# The manifest against the files


def test_manifest_describes_the_tokenizer_file(assets):
    manifest = support.read_manifest(assets.shards)
    assert manifest["format"] == "gpt1-shards" and manifest["version"] == 1
    tok_entry = manifest["tokenizer"]
    assert tok_entry["file"] == "tokenizer.model"
    assert tok_entry["blake2b"] == file_hash(assets.tokenizer)
    assert len(tok_entry["blake2b"]) == 64
    tok = SentencePieceTokenizer(assets.tokenizer)
    assert tok_entry["vocab_size"] == tok.vocab_size == support.VOCAB
    assert tok_entry["special"] == {"pad": 0, "eos": 2, "start": 3, "delim": 4, "extract": 5}
    assert manifest["dtype"] == "uint16"
    assert manifest["tokens_per_shard"] == support.TOKENS_PER_SHARD
    assert manifest["val_fraction"] == support.VAL_FRACTION
    assert manifest["inputs"] == [str(assets.corpus.resolve())]


def test_manifest_counts_match_the_shard_files(assets):
    manifest = support.read_manifest(assets.shards)
    for split in ("train", "val"):
        entry = manifest["splits"][split]
        shards = entry["shards"]
        assert shards, f"{split} has no shard"
        assert sum(s["tokens"] for s in shards) == entry["tokens"]
        for i, shard in enumerate(shards):
            path = assets.shards / shard["file"]
            assert shard["file"] == f"{split}_{i:05d}.arrow"
            assert path.stat().st_size == shard["bytes"]
            assert file_hash(path) == shard["blake2b"]
            # every shard but the last is full
            if i < len(shards) - 1:
                assert shard["tokens"] == support.TOKENS_PER_SHARD
            assert 0 < shard["tokens"] <= support.TOKENS_PER_SHARD
        assert len(support.split_tokens(assets.shards, split)) == entry["tokens"]
    # The train split is large enough to need several shards (the boundary tests rely on it).
    assert len(manifest["splits"]["train"]["shards"]) >= 3
    # No stray shard files beyond those listed.
    listed = {s["file"] for sp in manifest["splits"].values() for s in sp["shards"]}
    assert {p.name for p in assets.shards.glob("*.arrow")} == listed


def test_val_split_is_non_empty_and_documents_add_up(assets):
    manifest = support.read_manifest(assets.shards)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert val["tokens"] > 0 and val["documents"] > 0
    assert train["documents"] + val["documents"] == support.N_DOCS
    # text bytes: every non-blank line with its newline (documents are separated by one blank line)
    file_bytes = assets.corpus.stat().st_size
    assert train["text_bytes"] + val["text_bytes"] == file_bytes - (support.N_DOCS - 1)


def test_token_streams_are_the_encoded_documents_each_ending_in_eos(assets):
    tok = SentencePieceTokenizer(assets.tokenizer)
    expected = sorted(tuple(t for line in doc for t in tok.encode(line)) + (tok.eos_id,) for doc in assets.docs)
    got = []
    for split in ("train", "val"):
        stream = support.split_tokens(assets.shards, split).astype(np.int64)
        assert stream[-1] == tok.eos_id
        ends = np.flatnonzero(stream == tok.eos_id)
        start = 0
        for end in ends:
            got.append(tuple(int(t) for t in stream[start : end + 1]))
            start = end + 1
    assert sorted(got) == expected
    total = sum(len(t) for t in expected)
    manifest = support.read_manifest(assets.shards)
    assert manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"] == total


def test_written_files_follow_the_umask(assets):
    """Shards and manifests are data meant to be shared: they get the usual 0666 & ~umask mode."""
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    for name in ("manifest.json", "tokenizer.model", "train_00000.arrow"):
        mode = stat.S_IMODE((assets.shards / name).stat().st_mode)
        assert mode == expected, f"{name} has mode {oct(mode)}, expected {oct(expected)} (umask {oct(umask)})"


def test_overwrite_leaves_no_stale_shards(tmp_path, assets, capsys):
    """`--overwrite` replaces the shards: files of the previous run that the new manifest does not list go."""
    out = support.copy_shards(assets.shards, tmp_path / "s")
    assert len(list(out.glob("train_*.arrow"))) >= 3
    result = support.run_main(["tokenize", assets.corpus, "--out", out, "--tokenizer", assets.tokenizer,
                               "--tokens-per-shard", "1000000", "--overwrite", "-q"], capsys)
    assert result.code == 0, result.err
    manifest = support.read_manifest(out)
    listed = {s["file"] for split in manifest["splits"].values() for s in split["shards"]}
    assert listed == {"train_00000.arrow", "val_00000.arrow"}
    assert {p.name for p in out.glob("*.arrow")} == listed
