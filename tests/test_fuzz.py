"""Property-based bad input: every reader gives a correct result or one clear Gpt1Error, nothing else."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt1cli.cli.app import main
from gpt1cli.data.corpus import expand_inputs, iter_documents
from gpt1cli.data.pipeline import tokenize_corpus
from gpt1cli.data.shards import ShardDataset
from gpt1cli.data.tokenizer import load_tokenizer
from gpt1cli.errors import Gpt1Error
from gpt1cli.tasks.data import TASKS, load_examples
from gpt1cli.train.checkpoint import load_checkpoint
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
def assets(tmp_path_factory) -> dict[str, Path]:
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


@DEEP
@given(choice=st.integers(0, 10**6), value=json_values)
def test_manifests_with_a_wrong_value(assets, tmp_path_factory, choice, value):
    directory = tmp_path_factory.mktemp("m") / "shards"
    shutil.copytree(assets["shards"], directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    paths = list(_mutations(manifest))
    (directory / "manifest.json").write_text(json.dumps(_mutate(manifest, paths[choice % len(paths)], value)))
    only_clear_errors(lambda: ShardDataset(directory))


@FUZZ
@given(data=st.binary(min_size=1, max_size=600))
def test_shards_of_random_bytes(assets, tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("s") / "shards"
    shutil.copytree(assets["shards"], directory)
    shard = directory / "train_00000.arrow"
    size = shard.stat().st_size
    shard.write_bytes((data * (size // len(data) + 1))[:size])  # right size, wrong content
    assert only_clear_errors(lambda: ShardDataset(directory)) is None


@DEEP
@given(choice=st.integers(0, 10**6), value=json_values)
def test_checkpoint_metadata_with_a_wrong_value(assets, tmp_path_factory, choice, value):
    folder = tmp_path_factory.mktemp("k") / "ckpt"
    shutil.copytree(assets["checkpoint"], folder)
    meta = json.loads((folder / "checkpoint.json").read_text())
    paths = list(_mutations(meta))
    (folder / "checkpoint.json").write_text(json.dumps(_mutate(meta, paths[choice % len(paths)], value)))
    only_clear_errors(lambda: load_checkpoint(folder))


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
def test_non_positive_training_options_are_refused(assets, tmp_path_factory, capsys, option, value):
    out = tmp_path_factory.mktemp("o") / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--shards", str(assets["shards"]), "--out", str(out), option, str(value), "-q"])
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
