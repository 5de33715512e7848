"""`gpt1 make-task cloze`: passages of consecutive sentences and the true next sentence among
endings drawn from other documents; splits and choices fixed by the seed."""

from __future__ import annotations

import contextlib
import json
import random
import signal

import pytest

from support import (
    FINETUNE_ARGS, NEUTRAL_WORDS, assert_ok, assert_one_error_line, assert_refused_option, checkpoint_meta,
    read_jsonl, run_main,
)

N_DOCS = 14


def make_corpus_docs(seed: int = 21) -> list[list[str]]:
    """Documents of 4-10 unique sentences, each one a prose sentence the splitter keeps whole."""
    from gpt1cli.tasks.cloze import sentences_of

    rng = random.Random(seed)
    seen, docs = set(), []
    for _ in range(N_DOCS):
        sentences = []
        while len(sentences) < rng.randint(4, 10):
            words = [rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(5, 9))]
            sentence = " ".join(words).capitalize() + "."
            if sentence not in seen and sentences_of(sentence) == [sentence]:
                seen.add(sentence)
                sentences.append(sentence)
        docs.append(sentences)
    return docs


def write_corpus(path, docs):
    blocks = []
    for sentences in docs:  # two or three sentences per line, one blank line between documents
        lines, i = [], 0
        while i < len(sentences):
            lines.append(" ".join(sentences[i:i + 2 + (i % 2)]))
            i += 2 + (i % 2)
        blocks.append("\n".join(lines))
    path.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    docs = make_corpus_docs()
    path = write_corpus(tmp_path_factory.mktemp("cloze") / "stories.txt", docs)
    from gpt1cli.data.corpus import iter_documents
    from gpt1cli.tasks.cloze import sentences_of

    # precondition: the library reads back exactly these documents and sentences
    assert [sentences_of(" ".join(d.lines)) for d in iter_documents([path])] == docs
    return path, docs


def make_task(capsys, corpus_path, out, *extra):
    return run_main(["make-task", "cloze", corpus_path, "--out", out, *extra], capsys)


def read_task(out):
    return {split: read_jsonl(out / f"{split}.jsonl") for split in ("train", "val", "test")}


def test_cloze_examples_are_true_continuations(corpus, tmp_path, capsys):
    path, docs = corpus
    out = tmp_path / "cloze"
    assert_ok(make_task(capsys, path, out, "--choices", "3", "--context-sentences", "2", "--seed", "1"))
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "task.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "task.json").read_text())
    assert info["task"] == "mcq" and info["choices"] == 3 and info["context_sentences"] == 2 and info["seed"] == 1
    parts = read_task(out)
    assert info["examples"] == {k: len(v) for k, v in parts.items()}
    total = sum(len(s) // 3 for s in docs)  # non-overlapping passages of 2 + 1 sentences
    assert sum(info["examples"].values()) == total
    assert info["examples"]["train"] == int(total * 0.8) and info["examples"]["val"] == int(total * 0.1)

    doc_of = {s: d for d, sentences in enumerate(docs) for s in sentences}
    passages = {}  # context -> (document, true ending)
    for d, sentences in enumerate(docs):
        for start in range(0, len(sentences) - 2, 3):
            passages[" ".join(sentences[start:start + 2])] = (d, sentences[start + 2])
    contexts = []
    for split, rows in parts.items():
        for row in rows:
            assert set(row) == {"context", "choices", "label"}
            assert len(row["choices"]) == 3 and len(set(row["choices"])) == 3
            assert row["context"] in passages, row["context"]
            d, ending = passages[row["context"]]
            assert row["choices"][row["label"]] == ending  # the sentence that followed the context
            for k, choice in enumerate(row["choices"]):
                if k != row["label"]:
                    assert doc_of[choice] != d, "a distractor from the passage's own document"
            contexts.append(row["context"])
    assert sorted(contexts) == sorted(passages)  # every passage once, in exactly one split
    # the answer position is shuffled, not always the same
    assert len({row["label"] for rows in parts.values() for row in rows}) == 3


def test_cloze_output_is_an_mcq_task_that_trains(corpus, task_assets, tmp_path, capsys):
    from gpt1cli.tasks.data import load_examples

    path, _ = corpus
    out = tmp_path / "cloze"
    assert_ok(make_task(capsys, path, out, "--choices", "2", "--context-sentences", "1"))
    examples = load_examples(out / "train.jsonl", "mcq")
    assert all(len(e.fields["choices"]) == 2 and e.label in (0, 1) for e in examples)
    assert_ok(run_main(["finetune", "--task", "mcq", "--train", out / "train.jsonl",
                        "--val", out / "val.jsonl", "--from", task_assets.run, "--out", tmp_path / "run",
                        *FINETUNE_ARGS], capsys))
    assert checkpoint_meta(tmp_path / "run")["task"]["n_choices"] == 2


def test_cloze_same_seed_same_files_other_seed_other_files(corpus, tmp_path, capsys):
    path, _ = corpus
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        assert_ok(make_task(capsys, path, tmp_path / name, "--seed", seed, "--choices", "3", "--context-sentences", "2"))
    files = ("train.jsonl", "val.jsonl", "test.jsonl", "task.json")
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()
    # another seed reorders and re-splits the same passages with the same true endings
    def truth(out):
        return sorted((r["context"], r["choices"][r["label"]]) for rows in read_task(out).values() for r in rows)
    assert truth(tmp_path / "a") == truth(tmp_path / "c")


def test_cloze_train_fraction(corpus, tmp_path, capsys):
    path, docs = corpus
    out = tmp_path / "cloze"
    assert_ok(make_task(capsys, path, out, "--train-fraction", "0.5", "--context-sentences", "3"))
    total = sum(len(s) // 4 for s in docs)
    counts = json.loads((out / "task.json").read_text())["examples"]
    assert counts["train"] == int(total * 0.5) and sum(counts.values()) == total


def test_cloze_bad_options_and_too_small_corpus(corpus, tmp_path, capsys):
    path, docs = corpus
    assert_refused_option(make_task(capsys, path, tmp_path / "a", "--choices", "1"), "--choices", "at least 2")
    assert_refused_option(make_task(capsys, path, tmp_path / "b", "--train-fraction", "1.5"), "--train-fraction",
                          "less than 1")
    assert_one_error_line(run_main(["make-task", "quiz", path, "--out", tmp_path / "c"], capsys), "quiz")
    small = write_corpus(tmp_path / "small.txt", docs[:2])
    assert_one_error_line(make_task(capsys, small, tmp_path / "d", "--context-sentences", "3"), "passages")
    assert not (tmp_path / "d" / "task.json").exists()


@contextlib.contextmanager
def time_limit(seconds: int):
    def expired(*_):
        raise TimeoutError(f"did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_cloze_with_too_few_distractor_sentences_fails_instead_of_hanging(tmp_path, capsys):
    """One long document and one other document of a single sentence: with --choices 3 every
    passage of the long document needs 2 distinct distractors from other documents, and only one
    exists. make-task must stop with an error, not loop for ever."""
    rng = random.Random(4)
    long_doc = [" ".join(rng.choice(NEUTRAL_WORDS) for _ in range(7)).capitalize() + f" number {i}." for i in range(48)]
    path = write_corpus(tmp_path / "c.txt", [long_doc, ["The only other sentence of this corpus."]])
    with time_limit(5):
        result = make_task(capsys, path, tmp_path / "out", "--choices", "3", "--context-sentences", "3")
    assert_one_error_line(result, "--choices")
    assert not (tmp_path / "out" / "task.json").exists()
