"""Corpora in Arrow (IPC file and stream), Hugging Face ``datasets`` folders, .tsv and .csv, read
through ``--text-field``: the same text gives the same documents and the same shards as .txt and
.jsonl; bad inputs are one error naming the file and what was expected.

Every input is built here with pyarrow and the csv module, ``datasets`` folders in the layout
``save_to_disk`` writes (Arrow stream files, ``dataset_info.json``, ``state.json``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import support
from gpt1cli.data.corpus import expand_inputs, iter_documents, iter_text_batches
from gpt1cli.data.pipeline import _differences, _run_settings, tokenize_corpus
from gpt1cli.errors import Gpt1Error

# Texts with what delimited files must quote: a tab, a quote, a comma, a line break inside a record.
EXTRA_DOCS = [["a field with\ta tab inside", 'and "quoted" words, commas too'], ['"starts with a quote" then more']]


@pytest.fixture(scope="module")
def docs():
    return support.make_documents(60, seed=5) + EXTRA_DOCS


def record_texts(docs):
    return ["\n".join(lines) for lines in docs]


def body_table(docs) -> pa.Table:
    texts = record_texts(docs)
    return pa.table({"id": list(range(len(texts))), "body": texts})


def write_arrow(path: Path, table: pa.Table, kind: str, chunk: int = 7) -> Path:
    """``table`` as an Arrow IPC file or stream, in record batches of ``chunk`` rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink:
        opener = pa.ipc.new_file if kind == "file" else pa.ipc.new_stream
        with opener(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=chunk)
    return path


def write_dataset(folder: Path, table: pa.Table, shards: int = 2, features: dict | None = None) -> Path:
    """A ``Dataset.save_to_disk`` folder: ``shards`` Arrow stream files, dataset_info.json, state.json."""
    folder.mkdir(parents=True)
    names, rows = [], len(table)
    for index in range(shards):
        start, stop = rows * index // shards, rows * (index + 1) // shards
        name = f"data-{index:05d}-of-{shards:05d}.arrow"
        write_arrow(folder / name, table.slice(start, stop - start), "stream", chunk=5)
        names.append(name)
    features = features or {name: {"dtype": "string" if pa.types.is_string(table.schema.field(name).type) else "int64",
                                   "_type": "Value"} for name in table.schema.names}
    (folder / "dataset_info.json").write_text(json.dumps({"citation": "", "description": "", "features": features}))
    (folder / "state.json").write_text(json.dumps({
        "_data_files": [{"filename": name} for name in names], "_fingerprint": "0123456789abcdef",
        "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
        "_split": None}))
    return folder


def write_dataset_dict(folder: Path, splits: dict[str, pa.Table]) -> Path:
    for split, table in splits.items():
        write_dataset(folder / split, table, shards=1)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return folder


def write_delimited(path: Path, table: pa.Table, delimiter: str) -> Path:
    """A header and one row per record, quoted where needed (csv.QUOTE_MINIMAL, as pandas writes)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(table.schema.names)
        writer.writerows(zip(*(table.column(name).to_pylist() for name in table.schema.names)))
    return path


def texts(documents):
    return [doc.lines for doc in documents]


@pytest.fixture
def inputs(tmp_path, docs):
    """The same records in every tabular format, the text in a column named ``body``."""
    table = body_table(docs)
    return {
        "arrow-file": write_arrow(tmp_path / "c-file.arrow", table, "file"),
        "arrow-stream": write_arrow(tmp_path / "c-stream.arrow", table, "stream"),
        "datasets": write_dataset(tmp_path / "ds", table, shards=3),
        "tsv": write_delimited(tmp_path / "c.tsv", table, "\t"),
        "csv": write_delimited(tmp_path / "c.csv", table, ","),
    }


# ---------------------------------------------------------------------------------------------
# Reading


@pytest.mark.parametrize("kind", ["arrow-file", "arrow-stream", "datasets", "tsv", "csv"])
def test_every_format_gives_the_documents_of_the_txt_and_jsonl(kind, inputs, docs, tmp_path):
    txt = support.write_txt(tmp_path / "c.txt", docs)
    jsonl = support.write_jsonl(tmp_path / "c.jsonl", docs)
    paths = expand_inputs([str(inputs[kind])])
    found = list(iter_documents(paths, text_field="body"))
    assert texts(found) == texts(iter_documents([txt])) == texts(iter_documents([jsonl])) == docs
    assert [d.n_bytes for d in found] == [d.n_bytes for d in iter_documents([jsonl])]
    # progress counts every byte of every input file once
    assert sum(b.input_bytes for b in iter_text_batches(paths, text_field="body")) == sum(p.stat().st_size for p in paths)


def test_a_tsv_field_quoted_over_tabs_and_lines_stays_one_field(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_bytes(b'\xef\xbb\xbfid\ttext\n1\t"one\ttwo\nthree ""quoted"""\n\n2\tplain "inner" quote\n')
    assert texts(iter_documents([path])) == [["one\ttwo", 'three "quoted"'], ['plain "inner" quote']]


def test_a_datasets_folder_reads_its_files_in_state_order_and_a_dataset_dict_its_train_split(tmp_path, docs):
    folder = write_dataset(tmp_path / "ds", body_table(docs), shards=3)
    assert [p.name for p in expand_inputs([str(folder)])] == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    state = json.loads((folder / "state.json").read_text())
    state["_data_files"].reverse()
    (folder / "state.json").write_text(json.dumps(state))
    assert [p.name for p in expand_inputs([str(folder)])] == [f"data-0000{i}-of-00003.arrow" for i in (2, 1, 0)]

    both = write_dataset_dict(tmp_path / "dd", {"validation": body_table(docs[:3]), "train": body_table(docs[3:9])})
    assert texts(iter_documents(expand_inputs([str(both)]), text_field="body")) == docs[3:9]
    assert texts(iter_documents(expand_inputs([str(both / "validation")]), text_field="body")) == docs[:3]
    held_out = write_dataset_dict(tmp_path / "ho", {"validation": body_table(docs[:2]), "test": body_table(docs[2:4])})
    with pytest.raises(Gpt1Error, match=r"DatasetDict with the splits validation, test: name one split's folder, "
                                        r"such as .*ho/validation"):
        expand_inputs([str(held_out)])


def test_a_directory_search_reads_datasets_folders_and_skips_tokenize_shards(tmp_path, docs):
    root = tmp_path / "corpus"
    write_dataset(root / "wiki", body_table(docs[:4]), shards=2)
    support.write_jsonl(root / "notes.jsonl", docs[4:6])
    shards = tmp_path / "corpus" / "shards"
    shards.mkdir()
    write_arrow(shards / "train_00000.arrow", pa.table({"tokens": pa.array([1, 2], pa.uint16())}), "file")
    (shards / "manifest.json").write_text("{}")
    found = expand_inputs([str(root)])
    assert [p.relative_to(root.resolve()).as_posix() for p in found] == [
        "notes.jsonl", "wiki/data-00000-of-00002.arrow", "wiki/data-00001-of-00002.arrow"]


# ---------------------------------------------------------------------------------------------
# Tokenizing: the same text gives the same shards, whatever the format


@pytest.fixture(scope="module")
def reference(tmp_path_factory, docs):
    """The corpus as .txt and .jsonl, tokenized (the .txt run trains the tokenizer both use)."""
    root = tmp_path_factory.mktemp("reference")
    txt_out, jsonl_out = root / "txt-shards", root / "jsonl-shards"
    with support.one_torch_thread():
        tokenize_corpus([str(support.write_txt(root / "c.txt", docs))], txt_out, vocab_size=320, val_fraction=0.1,
                        seed=3, num_threads=1, tokens_per_shard=700, show_progress=False)
        tokenize_corpus([str(support.write_jsonl(root / "c.jsonl", docs))], jsonl_out, **_same(txt_out))
    return txt_out, jsonl_out


def _same(shards: Path) -> dict:
    return dict(tokenizer=str(shards / "tokenizer.model"), val_fraction=0.1, seed=3, num_threads=1,
                tokens_per_shard=700, show_progress=False)


@pytest.mark.parametrize("kind", ["arrow-file", "arrow-stream", "datasets", "tsv", "csv"])
def test_shards_of_every_format_equal_those_of_the_same_text_as_txt_and_jsonl(kind, inputs, reference, tmp_path):
    txt_out, jsonl_out = reference
    out = tmp_path / "shards"
    manifest = tokenize_corpus([str(inputs[kind])], out, text_field="body", **_same(txt_out))
    txt, jsonl = support.read_manifest(txt_out), support.read_manifest(jsonl_out)
    for split in ("train", "val"):
        counts = (manifest["splits"][split]["tokens"], manifest["splits"][split]["documents"])
        assert counts == (txt["splits"][split]["tokens"], txt["splits"][split]["documents"])
        assert manifest["splits"][split]["text_bytes"] == jsonl["splits"][split]["text_bytes"]
        assert np.array_equal(support.split_tokens(out, split), support.split_tokens(txt_out, split))
    assert manifest["splits"]["train"]["tokens"] > 1000 and manifest["splits"]["val"]["documents"] >= 3


def test_tokenize_cli_text_field_on_a_datasets_folder(inputs, reference, tmp_path, capsys):
    txt_out, _ = reference
    out = tmp_path / "cli-shards"
    support.assert_ok(support.run_main(
        ["tokenize", inputs["datasets"], "--out", out, "--text-field", "body", "--tokenizer", txt_out / "tokenizer.model",
         "--val-fraction", "0.1", "--seed", "3", "--tokens-per-shard", "700", "--threads", "1", "--quiet"], capsys))
    assert np.array_equal(support.split_tokens(out, "train"), support.split_tokens(txt_out, "train"))
    assert support.read_manifest(out)["inputs"] == [str(p) for p in expand_inputs([str(inputs["datasets"])])]


def test_a_resumed_run_must_read_the_same_text_field(tmp_path):
    path = support.write_txt(tmp_path / "a.txt", [["x"]])
    settings = dict(vocab_size=400, max_train_sentences=10, tokens_per_shard=100, val_fraction=0.1, seed=0,
                    errors="strict")
    default, body = _run_settings([path], None, **settings), _run_settings([path], None, text_field="body", **settings)
    assert "text_field" not in default  # journals of runs before --text-field still resume
    assert body["text_field"] == "body"
    assert _differences(default, body) == "--text-field was text"
    assert _differences(body, default) == "--text-field was body"


# ---------------------------------------------------------------------------------------------
# Bad inputs: one error line naming the file and what was expected


def tokenize_cli(capsys, reference, inputs, out, *extra):
    txt_out, _ = reference
    return support.run_main(["tokenize", *inputs, "--out", out, "--tokenizer", txt_out / "tokenizer.model",
                             "--threads", "1", "--quiet", *extra], capsys)


@pytest.mark.parametrize("kind", ["arrow-file", "arrow-stream", "datasets", "tsv", "csv"])
def test_a_missing_text_column_names_the_file_and_its_columns(kind, inputs, reference, tmp_path, capsys):
    result = tokenize_cli(capsys, reference, [inputs[kind]], tmp_path / "out")  # the default field: text
    shown = inputs[kind] / "data-00000-of-00003.arrow" if kind == "datasets" else inputs[kind]
    support.assert_one_error_line(result, str(shown), "no 'text' column (columns: id, body)", "--text-field")
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "tokenizer.model").exists()  # refused before anything was written


def test_a_text_column_of_numbers_is_refused(tmp_path):
    path = write_arrow(tmp_path / "n.arrow", pa.table({"text": [1, 2]}), "stream")
    with pytest.raises(Gpt1Error, match=r"n\.arrow: the 'text' column holds int64, not text"):
        list(iter_documents([path]))


def test_a_tsv_with_a_ragged_row_names_its_line(tmp_path, reference, capsys):
    path = tmp_path / "r.tsv"
    path.write_text("id\ttext\n1\tfine\n2\tan unquoted\ttab\n", encoding="utf-8")
    result = tokenize_cli(capsys, reference, [path], tmp_path / "out")
    line = support.assert_one_error_line(result, f"{path}:3", "3 field(s), but the header has 2 (id, text)")
    assert "quote a field that holds a tab" in line


def test_a_tsv_with_text_after_a_closing_quote_names_its_line(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text('id\ttext\n1\tfine\n2\t"quoted" and more\n', encoding="utf-8")
    with pytest.raises(Gpt1Error, match=r"q\.tsv:3: malformed TSV"):
        list(iter_documents([path]))


@pytest.mark.parametrize("name, message", [("e.arrow", "is empty: expected an Arrow IPC file or stream"),
                                           ("e.tsv", "is empty: expected a header line naming the columns"),
                                           ("g.arrow", "not a readable Arrow IPC file or stream")])
def test_an_empty_or_foreign_file(name, message, tmp_path, reference, capsys):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("e") else b"this is no arrow data at all")
    result = tokenize_cli(capsys, reference, [path], tmp_path / "out")
    support.assert_one_error_line(result, str(path), message)


def test_a_datasets_folder_missing_its_arrow_file(tmp_path, docs, reference, capsys):
    folder = write_dataset(tmp_path / "ds", body_table(docs), shards=2)
    (folder / "data-00001-of-00002.arrow").unlink()
    result = tokenize_cli(capsys, reference, [folder], tmp_path / "out", "--text-field", "body")
    support.assert_one_error_line(result, str(folder), "lists the data file data-00001-of-00002.arrow but it is missing")


@pytest.mark.parametrize("state, message", [
    ({"_data_files": []}, "lists no data files"),
    ({"_data_files": [{"filename": "../elsewhere.arrow"}]}, "not a plain file name"),
])
def test_a_datasets_folder_with_a_bad_state(state, message, tmp_path, docs):
    folder = write_dataset(tmp_path / "ds", body_table(docs), shards=1)
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(Gpt1Error, match=message):
        expand_inputs([str(folder)])


def test_an_empty_text_field_option_is_refused(tmp_path, reference, capsys):
    path = support.write_txt(tmp_path / "a.txt", [["x"]])
    support.assert_one_error_line(tokenize_cli(capsys, reference, [path], tmp_path / "out", "--text-field", ""),
                                  "--text-field must name a field or column")
