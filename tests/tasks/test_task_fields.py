"""Task files in .tsv, Arrow and ``datasets`` folders, and ``--field NAME=COLUMN``: the task's
fields read from columns of other names.

The same examples under other column names, in another format, must train the very same model
as the JSONL task files (``support.finetuned``). Every input is built here, ``datasets`` folders
in the layout ``save_to_disk`` writes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pytest

from support import (FINETUNE_ARGS, assert_ok, assert_one_error_line, checkpoint_meta, finetuned, read_jsonl,
                     run_main, task_file)
from gpt1cli.data.tables import TRAIN_SPLITS, VALIDATION_SPLITS
from gpt1cli.errors import Gpt1Error
from gpt1cli.tasks.data import load_examples, parse_fields
from gpt1cli.tasks.finetune import FinetuneConfig, finetune

ENTAIL_COLUMNS = {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"}
ENTAIL_FIELDS = ["--field", "premise=sentence1", "--field", "hypothesis=sentence2", "--field", "label=gold_label"]


def renamed(rows: list[dict], columns: dict[str, str], extra: bool = True) -> list[dict]:
    """``rows`` with their fields under other names (and an ``idx`` column first)."""
    return [{**({"idx": i} if extra else {}), **{columns.get(k, k): v for k, v in row.items()}}
            for i, row in enumerate(rows)]


def write_tsv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_arrow(path: Path, table: pa.Table, kind: str) -> Path:
    with pa.OSFile(str(path), "wb") as sink:
        with (pa.ipc.new_file if kind == "file" else pa.ipc.new_stream)(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=6)
    return path


def write_dataset(folder: Path, table: pa.Table, features: dict) -> Path:
    """A ``Dataset.save_to_disk`` folder with one Arrow stream file."""
    folder.mkdir(parents=True)
    write_arrow(folder / "data-00000-of-00001.arrow", table, "stream")
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_fingerprint": "f", "_split": folder.name}))
    return folder


def finetune_cli(capsys, task_assets, task, out, train, val, *extra):
    return run_main(["finetune", "--task", task, "--train", train, "--val", val, "--from", task_assets.run,
                     "--out", out, *FINETUNE_ARGS, *extra], capsys)


# ---------------------------------------------------------------------------------------------
# Fine-tuning on renamed columns


def test_entail_from_tsv_with_mapped_fields_trains_the_jsonl_model(task_assets, tmp_path, capsys):
    train, val = (read_jsonl(task_file(task_assets, "entail", split)) for split in ("train", "val"))
    train_tsv = write_tsv(tmp_path / "train.tsv", renamed(train, ENTAIL_COLUMNS))
    val_tsv = write_tsv(tmp_path / "val.tsv", renamed(val, ENTAIL_COLUMNS))
    run = tmp_path / "run"
    assert_ok(finetune_cli(capsys, task_assets, "entail", run, train_tsv, val_tsv, *ENTAIL_FIELDS))
    meta = checkpoint_meta(run)
    assert meta["weights_blake2b"] == checkpoint_meta(finetuned(task_assets, "entail"))["weights_blake2b"]
    assert meta["task"]["labels"] == ["contradiction", "entailment", "neutral"]
    # the checkpoint records the mapping (canonical: sorted), for eval and predict to read other files by
    assert meta["task"]["fields"] == ["hypothesis=sentence2", "label=gold_label", "premise=sentence1"]
    assert "fields" not in checkpoint_meta(finetuned(task_assets, "entail"))["task"]
    config = next(r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "config")
    assert (config["train_examples"], config["val_examples"]) == (32, 15)


@pytest.mark.parametrize("kinds", [("stream", "file"), ("file", "stream")])
def test_classify_from_arrow_with_mapped_fields_trains_the_jsonl_model(kinds, task_assets, tmp_path, capsys):
    columns = {"text": "sentence", "label": "gold"}
    paths = []
    for split, kind in zip(("train", "val"), kinds):
        rows = renamed(read_jsonl(task_file(task_assets, "classify", split)), columns)
        paths.append(write_arrow(tmp_path / f"{split}.arrow", pa.Table.from_pylist(rows), kind))
    run = tmp_path / "run"
    assert_ok(finetune_cli(capsys, task_assets, "classify", run, *paths,
                           "--field", "text=sentence", "--field", "label=gold"))
    meta = checkpoint_meta(run)
    assert meta["weights_blake2b"] == checkpoint_meta(finetuned(task_assets, "classify"))["weights_blake2b"]
    assert meta["task"]["labels"] == ["neg", "pos"]


def test_resume_keeps_the_field_mapping(task_assets, tmp_path):
    """--field is fixed on --resume: the same mapping (in any order) finds the finished run, another is refused."""
    rows = {s: renamed(read_jsonl(task_file(task_assets, "classify", s)), {"text": "body"}, extra=False)
            for s in ("train", "val")}
    paths = {s: write_tsv(tmp_path / f"{s}.tsv", rows[s]) for s in rows}
    base = dict(task="classify", train=str(paths["train"]), val=str(paths["val"]), from_run=str(task_assets.run),
                out=str(tmp_path / "run"), lr=1e-3, batch_size=16, epochs=1, device="cpu")
    first = finetune(FinetuneConfig(**base, fields=["text=body", "label=label"]), show_progress=False)
    again = finetune(FinetuneConfig(**base, fields=["label=label", "text=body"], resume=True), show_progress=False)
    assert again["already_finished"] and again["best"] == first["best"] and again["steps"] == 2
    with pytest.raises(Gpt1Error, match=r"cannot change --field \(the run has \['label=label', 'text=body'\], "
                                        r"given \['text=body'\]\)"):
        finetune(FinetuneConfig(**base, fields=["text=body"], resume=True), show_progress=False)


# ---------------------------------------------------------------------------------------------
# Reading: formats, mappings and datasets folders


def test_a_tsv_task_file_keeps_quoted_tabs_and_reads_numbers_as_labels(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text('s1\ts2\tlab\n"a\tb"\t"two\nlines"\t1\nc\td "e"\t0\n\nf\tg\t\n', encoding="utf-8")
    examples = load_examples(path, "similar", fields=["a=s1", "b=s2", "label=lab"], require_label=False)
    assert [(e.fields, e.label, e.where.rsplit(":", 1)[1]) for e in examples] == [
        ({"a": "a\tb", "b": "two\nlines"}, 1, "2"), ({"a": "c", "b": 'd "e"'}, 0, "4"), ({"a": "f", "b": "g"}, None, "6")]


def test_mcq_choices_from_several_columns_of_an_arrow_file(tmp_path):
    table = pa.table({"ctx": ["the cat", "a dog"], "ending0": ["sat", "ran"], "ending1": ["flew", "swam"],
                      "ending2": ["sang", "slept"], "answer": [0, 2]})
    path = write_arrow(tmp_path / "m.arrow", table, "stream")
    examples = load_examples(path, "mcq", fields={"context": "ctx", "choices": "ending0,ending1,ending2",
                                                  "label": "answer"})
    assert [(e.fields, e.label, e.where) for e in examples] == [
        ({"context": "the cat", "choices": ["sat", "flew", "sang"]}, 0, f"{path} row 1"),
        ({"context": "a dog", "choices": ["ran", "swam", "slept"]}, 2, f"{path} row 2")]


CLASS_FEATURES = {"sentence": {"dtype": "string", "_type": "Value"},
                  "label": {"names": ["negative", "positive"], "_type": "ClassLabel"}}


def dataset_dict(folder: Path) -> Path:
    splits = {"train": (["sunny joyful", "stormy awful", "golden lovely"], [1, 0, 1]),
              "validation": (["bitter broken", "cheerful"], [0, 1]),
              "test": (["gloomy", "lovely"], [-1, -1])}
    for split, (sentences, labels) in splits.items():
        write_dataset(folder / split, pa.table({"sentence": sentences, "label": pa.array(labels, pa.int64())}),
                      CLASS_FEATURES)
    (folder / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    return folder


def test_a_dataset_dict_gives_train_and_validation_splits_with_class_names(tmp_path):
    folder = dataset_dict(tmp_path / "sst")
    train = load_examples(folder, "classify", fields=["text=sentence"], splits=TRAIN_SPLITS)
    val = load_examples(folder, "classify", fields=["text=sentence"], splits=VALIDATION_SPLITS)
    assert [(e.fields["text"], e.label) for e in train] == [
        ("sunny joyful", "positive"), ("stormy awful", "negative"), ("golden lovely", "positive")]
    assert [(e.label, e.where) for e in val] == [("negative", f"{folder / 'validation'} row 1"),
                                                 ("positive", f"{folder / 'validation'} row 2")]
    # the test split's -1 is "no label": fine to predict, refused where labels are needed
    test = load_examples(folder / "test", "classify", fields=["text=sentence"], require_label=False)
    assert [e.label for e in test] == [None, None]
    with pytest.raises(Gpt1Error, match=r"test row 1: missing the 'label' field: it is -1"):
        load_examples(folder / "test", "classify", fields=["text=sentence"])
    with pytest.raises(Gpt1Error, match=r"sst is a datasets DatasetDict with the splits train, validation, test: "
                                        r"name one split's folder"):
        load_examples(folder, "classify", fields=["text=sentence"])


def test_class_label_indices_stay_indices_for_mcq(tmp_path):
    table = pa.table({"context": ["c"], "choices": [["x", "y"]], "label": [1]})
    folder = write_dataset(tmp_path / "m", table, {"label": {"names": ["first", "second"], "_type": "ClassLabel"}})
    assert [e.label for e in load_examples(folder, "mcq")] == [1]


# ---------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("kind", ["tsv", "arrow", "jsonl"])
def test_a_missing_mapped_column_names_the_file_the_field_and_the_columns(kind, tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "gold_label": "entailment"}]
    if kind == "tsv":
        path = write_tsv(tmp_path / "t.tsv", rows)
    elif kind == "arrow":
        path = write_arrow(tmp_path / "t.arrow", pa.Table.from_pylist(rows), "file")
    else:
        path = tmp_path / "t.jsonl"
        path.write_text(json.dumps(rows[0]) + "\n")
    where = f"{path}:1" if kind == "jsonl" else str(path)
    columns = "its fields" if kind == "jsonl" else "the file's columns"
    with pytest.raises(Gpt1Error) as info:
        load_examples(path, "entail", fields=["premise=s1", "hypothesis=sentence2", "label=gold_label"])
    assert str(info.value) == (f"{where}: missing the 's1' column that --field premise=s1 names "
                               f"({columns}: sentence1, sentence2, gold_label)")
    with pytest.raises(Gpt1Error) as info:
        load_examples(path, "entail")
    assert str(info.value) == (f"{where}: missing the 'premise' field (an entail example needs premise, hypothesis, "
                               f"label; {columns}: sentence1, sentence2, gold_label): name its column with "
                               "--field premise=COLUMN")


def test_a_ragged_tsv_row_and_an_empty_tsv(tmp_path):
    ragged = tmp_path / "r.tsv"
    ragged.write_text("text\tlabel\nfine\tpos\nan unquoted\ttab\tneg\n", encoding="utf-8")
    with pytest.raises(Gpt1Error, match=r"r\.tsv:3: 3 field\(s\), but the header has 2 \(text, label\)"):
        load_examples(ragged, "classify")
    empty = tmp_path / "e.tsv"
    empty.write_text("")
    with pytest.raises(Gpt1Error, match=r"e\.tsv is empty: expected a header line naming the columns"):
        load_examples(empty, "classify")
    empty_arrow = tmp_path / "e.arrow"
    empty_arrow.write_bytes(b"")
    with pytest.raises(Gpt1Error, match=r"e\.arrow is empty: expected an Arrow IPC file or stream"):
        load_examples(empty_arrow, "classify")


def test_a_datasets_folder_missing_its_arrow_file(tmp_path):
    folder = dataset_dict(tmp_path / "sst")
    (folder / "train" / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(Gpt1Error, match=r"sst/train: state\.json lists the data file data-00000-of-00001\.arrow "
                                        r"but it is missing"):
        load_examples(folder, "classify", fields=["text=sentence"], splits=TRAIN_SPLITS)


def test_string_labels_where_the_task_wants_numbers_or_indices(tmp_path):
    path = write_arrow(tmp_path / "s.arrow", pa.table({"a": ["x"], "b": ["y"], "label": ["high"]}), "stream")
    with pytest.raises(Gpt1Error, match=r"s\.arrow row 1: --regression needs a finite number as label, got 'high'"):
        load_examples(path, "similar", regression=True)
    mcq = write_arrow(tmp_path / "m.arrow", pa.table({"context": ["c"], "choices": [["x", "y"]], "label": ["z"]}),
                      "stream")
    with pytest.raises(Gpt1Error, match=r"label 'z' is neither a choice index \(0\.\.1\) nor one of the choices"):
        load_examples(mcq, "mcq")


@pytest.mark.parametrize("fields, message", [
    (["premise"], "--field takes NAME=COLUMN (such as premise=sentence1), got 'premise'"),
    (["premise="], "--field takes NAME=COLUMN with both parts given"),
    (["text=a"], "--field text=a: the entail task has no field 'text' (its fields: premise, hypothesis, label)"),
    (["premise=a", "premise=b"], "--field maps the field 'premise' twice (premise=a and premise=b)"),
    (["premise=a,b"], "--field premise=a,b: only choices may name several columns"),
])
def test_bad_field_mappings(fields, message):
    with pytest.raises(Gpt1Error) as info:
        parse_fields(fields, "entail")
    assert message in str(info.value)


def test_bad_field_options_and_unknown_task_on_the_command_line(task_assets, tmp_path, capsys):
    train, val = (task_file(task_assets, "entail", s) for s in ("train", "val"))
    out = tmp_path / "run"
    assert_one_error_line(finetune_cli(capsys, task_assets, "entail", out, train, val, "--field", "text=sentence"),
                          "--field text=sentence: the entail task has no field 'text'")
    assert_one_error_line(finetune_cli(capsys, task_assets, "entail", out, train, val, "--field", "nonsense"),
                          "--field takes NAME=COLUMN")
    assert_one_error_line(finetune_cli(capsys, task_assets, "summarise", out, train, val),
                          "unknown task 'summarise'; choose one of classify, entail, similar, mcq, generate")
    assert_one_error_line(finetune_cli(capsys, task_assets, "entail", out, train, val, "--field", "premise=nope"),
                          f"{train}:1: missing the 'nope' column that --field premise=nope names")
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(Gpt1Error, match="unknown task 'summarise'; choose one of classify, entail, similar, mcq, generate"):
        FinetuneConfig(task="summarise", train="a", val="b", from_run="c", out="d").check()
    assert FinetuneConfig(task="entail", train="a", val="b", from_run="c", out="d",
                          fields=["label=gold", "premise=s1"]).check().fields == ["label=gold", "premise=s1"]
