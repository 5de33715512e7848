"""Corpus inputs: .txt, .jsonl, .parquet, directories and globs, read as documents and tokenized."""

from __future__ import annotations

import os

import numpy as np
import pytest

import support
from gpt1cli.data.corpus import expand_inputs, iter_documents, split_long_line
from gpt1cli.errors import Gpt1Error


@pytest.fixture(scope="module")
def docs():
    return support.make_documents(30, seed=77)


def texts(documents):
    return [doc.lines for doc in documents]


# ---------------------------------------------------------------------------------------------
# Readers


def test_txt_documents_are_runs_of_lines_between_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"first line\nsecond line\n\n\n\nthird\r\n   \t\nfourth\nfifth")
    documents = list(iter_documents([path]))
    assert texts(documents) == [["first line", "second line"], ["third"], ["fourth", "fifth"]]
    # bytes: each non-blank line with its line ending
    assert [d.n_bytes for d in documents] == [len(b"first line\nsecond line\n"), len(b"third\r\n"),
                                              len(b"fourth\nfifth")]


def test_txt_jsonl_and_parquet_give_the_same_documents(tmp_path, docs):
    txt = support.write_txt(tmp_path / "c.txt", docs)
    jsonl = support.write_jsonl(tmp_path / "c.jsonl", docs)
    parquet = support.write_parquet(tmp_path / "c.parquet", docs)
    for path in (txt, jsonl, parquet):
        assert texts(iter_documents([path])) == docs, path.suffix
    joined = list(iter_documents([jsonl]))
    assert [d.n_bytes for d in joined] == [len("\n".join(lines).encode()) for lines in docs]


def test_jsonl_skips_blank_lines_and_empty_texts(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "one\\n\\ntwo"}\n\n   \n{"text": "   "}\n{"text": "three", "meta": 1}\n', encoding="utf-8")
    assert texts(iter_documents([path])) == [["one", "two"], ["three"]]


def test_parquet_skips_null_and_empty_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["alpha beta", None, "", "gamma\ndelta"]}), path)
    assert texts(iter_documents([path])) == [["alpha beta"], ["gamma", "delta"]]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', ":2: missing the 'text' field"),
        ("b.jsonl", '{"text": "ok"}\nnot json\n', ":2: not valid JSON"),
        ("c.jsonl", '{"text": 5}\n', "line 1 has a 'text' that is not a string"),
    ],
)
def test_bad_jsonl_records_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(Gpt1Error) as info:
        list(iter_documents([path]))
    assert str(path) in str(info.value) and message in str(info.value)


def test_parquet_without_text_column_lists_its_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), path)
    with pytest.raises(Gpt1Error, match=r"no 'text' column \(columns: body, id\)"):
        list(iter_documents([path]))


def test_invalid_utf8_names_the_byte_offset_or_is_replaced(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\n\nabc \xff\xfe def\n")
    with pytest.raises(Gpt1Error) as info:
        list(iter_documents([path]))
    offset = len(b"good line\n\nabc ")  # 15: the first bad byte
    assert f"{path}: invalid UTF-8 at byte {offset};" in str(info.value)
    assert texts(iter_documents([path], errors="replace")) == [["good line"], ["abc \ufffd\ufffd def"]]


def test_split_long_line_keeps_all_words_under_the_limit():
    line = " ".join(f"word{i}" for i in range(500))
    pieces = split_long_line(line, 100)
    assert all(len(p.encode()) <= 100 for p in pieces)
    assert " ".join(pieces) == line
    huge = "x" * 1000
    assert "".join(split_long_line(huge, 100)) == huge


# ---------------------------------------------------------------------------------------------
# Expanding inputs


def test_directories_are_searched_recursively_and_globs_expanded(tmp_path, docs):
    support.write_txt(tmp_path / "d" / "b.txt", docs[:3])
    support.write_jsonl(tmp_path / "d" / "sub" / "a.jsonl", docs[3:5])
    support.write_parquet(tmp_path / "d" / "sub" / "deeper" / "c.parquet", docs[5:6])
    (tmp_path / "d" / "notes.md").write_text("ignored")
    found = expand_inputs([str(tmp_path / "d")])
    assert [p.relative_to((tmp_path / "d").resolve()).as_posix() for p in found] == \
        ["b.txt", "sub/a.jsonl", "sub/deeper/c.parquet"]
    assert expand_inputs([str(tmp_path / "d" / "**" / "*.jsonl")]) == [(tmp_path / "d" / "sub" / "a.jsonl").resolve()]
    # the same file named twice is read once
    assert len(expand_inputs([str(tmp_path / "d" / "b.txt"), str(tmp_path / "d")])) == 3


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: str(d / "missing.txt"), "input not found"),
        (lambda d: str(d / "*.nothing"), "matches no file"),
        (lambda d: (d / "e").mkdir() or str(d / "e"), "holds no .txt, .jsonl, .parquet, .arrow, .tsv, .csv file"),
        (lambda d: (d / "x.docx").write_text("a") and str(d / "x.docx"), "unsupported input"),
    ],
)
def test_expand_inputs_errors_name_the_input(tmp_path, make, message):
    item = make(tmp_path)
    with pytest.raises(Gpt1Error) as info:
        expand_inputs([item])
    assert message in str(info.value) and item.replace("*.nothing", "") in str(info.value)


def test_a_symlinked_txt_is_read_by_its_own_suffix(tmp_path, docs):
    """Data managers (git-annex, DVC, HF caches) store content in suffix-less blobs behind symlinks."""
    blob = support.write_txt(tmp_path / "objects" / "5e1f0c9a", docs[:4])
    link = tmp_path / "corpus.txt"
    os.symlink(blob, link)
    assert texts(iter_documents(expand_inputs([str(link)]))) == docs[:4]


# ---------------------------------------------------------------------------------------------
# Through `gpt1 tokenize` (reusing the session tokenizer: no training)


def _tokenize(capsys, inputs, out, tokenizer, *extra):
    result = support.run_main(["tokenize", *inputs, "--out", out, "--tokenizer", tokenizer,
                               "--tokens-per-shard", "500", "--val-fraction", "0.2", "--threads", "1", "-q", *extra],
                              capsys)
    assert result.code == 0, result.err
    return support.read_manifest(out)


def test_each_format_tokenizes_to_the_same_shards(tmp_path, docs, assets, capsys):
    sources = {
        "txt": support.write_txt(tmp_path / "c.txt", docs),
        "jsonl": support.write_jsonl(tmp_path / "c.jsonl", docs),
        "parquet": support.write_parquet(tmp_path / "c.parquet", docs),
    }
    streams = {}
    for kind, path in sources.items():
        out = tmp_path / f"shards-{kind}"
        manifest = _tokenize(capsys, [path], out, assets.tokenizer)
        assert manifest["inputs"] == [str(path.resolve())]
        splits = manifest["splits"]
        assert splits["train"]["documents"] + splits["val"]["documents"] == len(docs)
        assert splits["val"]["tokens"] > 0
        streams[kind] = (support.split_tokens(out, "train"), support.split_tokens(out, "val"))
    for kind in ("jsonl", "parquet"):
        assert np.array_equal(streams[kind][0], streams["txt"][0]), kind
        assert np.array_equal(streams[kind][1], streams["txt"][1]), kind


def test_a_directory_and_a_glob_as_inputs(tmp_path, docs, assets, capsys):
    support.write_txt(tmp_path / "d" / "a.txt", docs[:10])
    support.write_jsonl(tmp_path / "d" / "b.jsonl", docs[10:20])
    support.write_parquet(tmp_path / "d" / "sub" / "c.parquet", docs[20:])
    (tmp_path / "d" / "README.md").write_text("# not corpus\n")
    manifest = _tokenize(capsys, [tmp_path / "d"], tmp_path / "from-dir", assets.tokenizer)
    assert [os.path.basename(p) for p in manifest["inputs"]] == ["a.txt", "b.jsonl", "c.parquet"]
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == len(docs)

    manifest = _tokenize(capsys, [str(tmp_path / "d" / "*.jsonl")], tmp_path / "from-glob", assets.tokenizer)
    assert [os.path.basename(p) for p in manifest["inputs"]] == ["b.jsonl"]
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["val"]["documents"] == 10

    # several inputs in one call, concatenated in the given order
    both = _tokenize(capsys, [tmp_path / "d" / "a.txt", tmp_path / "d" / "b.jsonl"], tmp_path / "two",
                     assets.tokenizer, "--val-fraction", "0.01")
    assert both["splits"]["train"]["documents"] + both["splits"]["val"]["documents"] == 20


def test_a_tiny_corpus_still_gets_a_validation_split(tmp_path, assets, capsys):
    """Too few documents for a sampled split: the end of the training stream is held out."""
    path = support.write_txt(tmp_path / "one.txt", support.make_documents(1, seed=5, min_lines=3, max_lines=3))
    manifest = _tokenize(capsys, [path], tmp_path / "s", assets.tokenizer, "--val-fraction", "0.001")
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert train["documents"] == 1 and val["tokens"] >= 2 and train["tokens"] > 0
    whole = np.concatenate([support.split_tokens(tmp_path / "s", "train"), support.split_tokens(tmp_path / "s", "val")])
    from gpt1cli.tokenizer.sentencepiece_bpe import SentencePieceTokenizer

    tok = SentencePieceTokenizer(assets.tokenizer)
    lines = path.read_text().split("\n")
    expected = [t for line in lines if line.strip() for t in tok.encode(line)] + [tok.eos_id]
    assert whole.tolist() == expected
