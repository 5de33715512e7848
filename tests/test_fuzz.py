"""Property-based bad input: every reader gives a correct result or one clear Gpt1Error, nothing else."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpt1cli.checkpoint import load_checkpoint
from gpt1cli.cli.app import main
from gpt1cli.data.corpus import expand_inputs, iter_documents
from gpt1cli.data.pipeline import tokenize_corpus
from gpt1cli.data.shards import ShardDataset
from gpt1cli.errors import Gpt1Error
from gpt1cli.tasks.data import TASKS, load_examples
from gpt1cli.tokenizer import load_tokenizer
from gpt1cli.train.pretrain import PretrainConfig, pretrain

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
DEEP = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def only_clear_errors(action):
    """Run ``action``; a Gpt1Error is a clear answer, any other exception a defect."""
    try:
        return action()
    except Gpt1Error as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        return None


@pytest.fixture(scope="module")
def fuzz_assets(tmp_path_factory) -> dict[str, Path]:
    """Shards and a one-step run far smaller than the session's ``assets``: examples copy them hundreds of times."""
    root = tmp_path_factory.mktemp("fuzz")
    corpus = root / "corpus.txt"
    corpus.write_text("".join(f"sentence number {i} says something about shards and readers.\n\n" for i in range(300)))
    tokenize_corpus([str(corpus)], root / "shards", vocab_size=300, show_progress=False)
    pretrain(PretrainConfig(shards=str(root / "shards"), out=str(root / "run"), steps=1, batch_size=2, n_ctx=16,
                            eval_tokens=32), show_progress=False)
    return {"root": root, "shards": root / "shards", "run": root / "run",
            "checkpoint": next((root / "run" / "checkpoints").glob("step_*"))}


@FUZZ
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".txt", ".jsonl", ".parquet"]))
def test_corpus_readers_on_random_bytes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("c") / f"corpus{suffix}"
    path.write_bytes(data)
    documents = only_clear_errors(lambda: list(iter_documents(expand_inputs([str(path)]))))
    for document in documents or []:
        assert all(line.strip() and "\x00" not in line for line in document.lines)


@FUZZ
@given(records=st.lists(json_values, max_size=5))
def test_jsonl_corpus_with_wrong_structure(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("j") / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    only_clear_errors(lambda: list(iter_documents([path])))


@FUZZ
@given(task=st.sampled_from(TASKS), records=st.lists(st.dictionaries(
    st.sampled_from(["text", "label", "premise", "hypothesis", "a", "b", "context", "choices", "other"]), json_values,
    max_size=6), max_size=5), regression=st.booleans())
def test_task_files_with_wrong_structure(tmp_path_factory, task, records, regression):
    path = tmp_path_factory.mktemp("t") / "task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    examples = only_clear_errors(lambda: load_examples(path, task, regression=regression and task == "similar"))
    for example in examples or []:
        assert example.label is not None


@FUZZ
@given(data=st.binary(max_size=1000), suffix=st.sampled_from([".jsonl", ".csv", ".parquet"]))
def test_task_files_of_random_bytes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("tb") / f"task{suffix}"
    path.write_bytes(data)
    only_clear_errors(lambda: load_examples(path, "classify"))


def _mutations(document: dict):
    """Paths to every value in a nested JSON document."""
    stack = [((), document)]
    while stack:
        path, value = stack.pop()
        yield path
        if isinstance(value, dict):
            stack.extend((path + (k,), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((path + (i,), v) for i, v in enumerate(value))


def _mutate(document: dict, path: tuple, value) -> dict:
    copy = json.loads(json.dumps(document))
    if not path:
        return value
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _edited_copy(source: Path, name: str, tmp_path_factory, edit) -> Path:
    """A copy of the folder ``source`` whose JSON file ``name`` is replaced by ``edit(its document)``."""
    folder = tmp_path_factory.mktemp("edited") / source.name
    shutil.copytree(source, folder)
    document = json.loads((folder / name).read_text())
    (folder / name).write_text(json.dumps(edit(document)))  # NaN/Infinity as Python writes them
    return folder


@pytest.mark.parametrize("target", ["manifest", "checkpoint metadata"])
@DEEP
@given(choice=st.integers(0, 10**6), value=json_values)
def test_a_wrong_value_anywhere_in_the_json_of_shards_or_a_checkpoint(fuzz_assets, tmp_path_factory, target, choice,
                                                                      value):
    source, name, open_folder = {"manifest": (fuzz_assets["shards"], "manifest.json", ShardDataset),
                                 "checkpoint metadata": (fuzz_assets["checkpoint"], "checkpoint.json", load_checkpoint),
                                 }[target]

    def change_one_value(document):
        paths = list(_mutations(document))
        return _mutate(document, paths[choice % len(paths)], value)

    folder = _edited_copy(source, name, tmp_path_factory, change_one_value)
    only_clear_errors(lambda: open_folder(folder))


@FUZZ
@given(data=st.binary(min_size=1, max_size=600))
def test_shards_of_random_bytes(fuzz_assets, tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("s") / "shards"
    shutil.copytree(fuzz_assets["shards"], directory)
    shard = directory / "train_00000.arrow"
    size = shard.stat().st_size
    shard.write_bytes((data * (size // len(data) + 1))[:size])  # right size, wrong content
    assert only_clear_errors(lambda: ShardDataset(directory)) is None


@FUZZ
@given(data=st.binary(max_size=3000), suffix=st.sampled_from([".model", ".json"]))
def test_tokenizer_files_of_random_bytes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("tok") / f"tokenizer{suffix}"
    path.write_bytes(data)
    assert only_clear_errors(lambda: load_tokenizer(path)) is None


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(option=st.sampled_from(["--steps", "--batch-size", "--grad-accum", "--eval-every", "--ckpt-every", "--keep",
                               "--log-every", "--eval-tokens", "--max-bad-steps", "--stop-after"]),
       value=st.integers(-10**6, 0))
def test_non_positive_training_options_are_refused(fuzz_assets, tmp_path_factory, capsys, option, value):
    out = tmp_path_factory.mktemp("o") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--shards", str(fuzz_assets["shards"]), "--out", str(out), option, str(value), "-q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error" in err.lower()
    assert not (out / "checkpoints").exists()


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(vocab=st.integers(-1000, 263), text=st.text(string.ascii_letters + " ", min_size=1, max_size=50))
def test_vocabulary_smaller_than_the_specials_is_refused(tmp_path_factory, capsys, vocab, text):
    root = tmp_path_factory.mktemp("v")
    (root / "c.txt").write_text(text + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize", str(root / "c.txt"), "--out", str(root / "out"), "--vocab-size", str(vocab), "-q"])
    assert exit_info.value.code == 2
    assert "--vocab-size" in capsys.readouterr().err
    assert not (root / "out" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# Hostile inputs: JSON bombs, byte-order marks, names that leave their folder, absurd numbers

BOMB_LINES = st.one_of(
    st.integers(4400, 6000).map(lambda n: '{"text": "a", "n": ' + "9" * n + "}"),
    # deeper than any recursion limit a test runs under (hypothesis raises it to a few thousand)
    st.integers(5000, 40_000).map(lambda d: '{"text": ' + "[" * d + "]" * d + "}"),
    st.integers(5000, 40_000).map(lambda d: "[" * d),
    st.integers(5000, 20_000).map(lambda d: '{"a": ' * d + "1" + "}" * d),
)
FINE_LINES = st.text(string.ascii_letters + " ", min_size=1, max_size=30).map(lambda t: json.dumps({"text": t}))
BOM = b"\xef\xbb\xbf"


def clear_error(action) -> str | None:
    """The message of the one Gpt1Error ``action`` raises, or None when it succeeds."""
    try:
        action()
    except Gpt1Error as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        return message
    return None


@FUZZ
@given(lines=st.lists(st.one_of(BOMB_LINES, FINE_LINES), min_size=1, max_size=4), bom=st.booleans())
def test_jsonl_corpus_with_json_bombs(tmp_path_factory, lines, bom):
    path = tmp_path_factory.mktemp("bomb") / "corpus.jsonl"
    path.write_bytes((BOM if bom else b"") + "\n".join(lines).encode() + b"\n")
    message = clear_error(lambda: list(iter_documents([path])))
    bombs = [number for number, line in enumerate(lines, start=1) if '"text": "a", "n"' in line or line.startswith("[")
             or line.startswith('{"a"') or line.startswith('{"text": [')]
    if bombs:
        assert message is not None and message.startswith(f"{path}:{bombs[0]}: ")
    else:
        assert message is None


@FUZZ
@given(text=st.text(st.sampled_from("ab \t\n\r\x00é\u3000\ufeff"), max_size=60), suffix=st.sampled_from([".txt", ".jsonl"]))
def test_a_bom_reads_exactly_like_the_file_without_it(tmp_path_factory, text, suffix):
    assume(not text.startswith("\ufeff"))  # a file that starts with a BOM of its own
    folder = tmp_path_factory.mktemp("bom")
    body = text.encode() if suffix == ".txt" else (json.dumps({"text": text}) + "\n").encode()
    plain, marked = folder / f"plain{suffix}", folder / f"marked{suffix}"
    plain.write_bytes(body)
    marked.write_bytes(BOM + body)
    documents = [(d.lines, d.n_bytes) for d in iter_documents([plain])]
    assert [(d.lines, d.n_bytes) for d in iter_documents([marked])] == documents


ESCAPING_NAMES = st.one_of(
    st.sampled_from(["/etc/passwd", "../x", "..", ".", "", "a/b", ".hidden", "x\\y", "tok\x00.model", "/",
                     "../../manifest.json", "./train_00000.arrow"]),
    st.text(max_size=10).map(lambda t: "../" + t),
    st.text(max_size=10).map(lambda t: "/" + t),
    st.text(min_size=1, max_size=10).map(lambda t: t + "/x"),
    st.text(max_size=8).map(lambda t: "." + t),
)


@DEEP
@given(name=ESCAPING_NAMES, where=st.integers(0, 10**6))
def test_manifest_names_that_leave_the_folder(fuzz_assets, tmp_path_factory, name, where):
    def rename(manifest):
        places = [manifest["tokenizer"]] + [s for split in manifest["splits"].values() for s in split["shards"]]
        places[where % len(places)]["file"] = name
        return manifest

    directory = _edited_copy(fuzz_assets["shards"], "manifest.json", tmp_path_factory, rename)
    message = clear_error(lambda: ShardDataset(directory))
    assert message is not None and "not a plain file name in its folder" in message


ABSURD_NUMBERS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1, -(10**30), 10**30, True])


@DEEP
@given(choice=st.integers(0, 10**6), value=ABSURD_NUMBERS)
def test_manifest_numbers_that_are_not_finite_or_absurd(fuzz_assets, tmp_path_factory, choice, value):
    manifest = json.loads((fuzz_assets["shards"] / "manifest.json").read_text())
    numbers = [path for path in _mutations(manifest) if path and isinstance(_value_at(manifest, path), (int, float))]
    path = numbers[choice % len(numbers)]
    directory = _edited_copy(fuzz_assets["shards"], "manifest.json", tmp_path_factory,
                             lambda manifest: _mutate(manifest, path, value))
    message = clear_error(lambda: ShardDataset(directory))
    assert message is not None, f"{'.'.join(map(str, path))} = {value!r} was accepted"


def _value_at(document, path):
    for key in path:
        document = document[key]
    return document


def _reference_txt_documents(raw: bytes) -> list[tuple[list[str], int]]:
    """The one-line-at-a-time reader the chunked one replaced (documents and their bytes)."""
    import io

    documents, lines, size = [], [], 0
    for line in io.BytesIO(raw[3:] if raw.startswith(BOM) else raw):
        text = line.decode("utf-8").replace("\x00", "").rstrip("\r\n")
        if text.strip():
            lines.append(text)
            size += len(line)
        elif lines:
            documents.append((lines, size))
            lines, size = [], 0
    if lines:
        documents.append((lines, size))
    return documents


@DEEP
@given(text=st.lists(st.sampled_from(["a", "b", " ", "\n", "\n\n", "\r", "\x00", "é", "\u3000", "\t", "\x85", "🙂",
                                      "word "]), max_size=80).map("".join),
       bom=st.booleans(), read=st.integers(1, 40), batch=st.integers(1, 60))
def test_chunked_txt_reading_matches_line_by_line_reading(tmp_path_factory, text, bom, read, batch):
    import gpt1cli.data.corpus as corpus

    path = tmp_path_factory.mktemp("chunks") / "c.txt"
    raw = (BOM if bom else b"") + text.encode()
    path.write_bytes(raw)
    saved = corpus.READ_BYTES, corpus.BATCH_BYTES
    corpus.READ_BYTES, corpus.BATCH_BYTES = read, batch
    try:
        documents = [(d.lines, d.n_bytes) for d in iter_documents([path])]
        batches = list(corpus.iter_text_batches([path]))
    finally:
        corpus.READ_BYTES, corpus.BATCH_BYTES = saved
    assert documents == _reference_txt_documents(raw)
    assert sum(b.input_bytes for b in batches) == len(raw)
    assert sum(sum(b.sizes) for b in batches) == sum(n for _, n in documents)
    assert all(a.open_end == b.open_start for a, b in zip(batches, batches[1:]))
