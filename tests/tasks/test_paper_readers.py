"""The readers of the paper's benchmarks: tiny files in each published layout (with its quirks)
read into exactly the records our task files hold, and bad input refused with one line naming
the file and what was expected.

:func:`write_layouts` (also used by ``test_paper_tasks.py``) writes every dataset under a root in
its published folder and returns the records each split must read as.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from gpt1cli.errors import Gpt1Error
from gpt1cli.tasks.paper import find_folder, get_task, read_split
from gpt1cli.tasks.paper.registry import SUITES, TASKS, hold_out

GOOD = "sunny joyful golden lovely cheerful".split()
BAD = "stormy gloomy bitter broken awful".split()
PLAIN = "the old farmer walked over a green hill with his dog near river".split()
SIZES = {"train": 12, "dev": 6, "test": 6}


def sentence(rng: random.Random, signal: str | None = None, n: int = 5) -> str:
    words = [rng.choice(PLAIN) for _ in range(n)]
    if signal:
        words.insert(rng.randrange(n + 1), signal)
    return " ".join(words)


def tsv(path: Path, lines: list[str], *, bom: bool = False, crlf: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    end = "\r\n" if crlf else "\n"
    path.write_bytes((("\ufeff" if bom else "") + end.join(lines) + end).encode("utf-8"))
    return path


def jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


class Layouts:
    """Writes the datasets and keeps ``expected[(task, split)]``: the (fields, label) pairs to read."""

    def __init__(self, root: Path, seed: int = 0):
        self.root, self.rng, self.expected = Path(root), random.Random(seed), {}

    def expect(self, task: str, split: str, fields: dict, label) -> None:
        self.expected.setdefault((task, split), []).append((fields, label))

    # --- GLUE ----------------------------------------------------------------------------------

    def cola(self):
        folder = self.root / "glue" / "CoLA"
        for split in ("train", "dev"):
            lines = []
            for i in range(SIZES[split]):
                label = i % 2
                text = sentence(self.rng, GOOD[i % 5] if label else BAD[i % 5])
                if i == 2:
                    text = 'He said "so\tbe it" then'  # a quote and a tab inside the last column
                mark = "" if label else "*"
                lines.append(f"gj04\t{label}\t{mark}\t{text}")
                self.expect("cola", split, {"text": text}, label)
            tsv(folder / f"{split}.tsv", lines, crlf=split == "dev")
        tsv(folder / "test.tsv", ["index\tsentence", "0\tthe dog sat", "1\ta cat ran"])

    def sst2(self):
        folder = self.root / "glue" / "SST-2"
        for split in ("train", "dev"):
            lines = ["sentence\tlabel"]
            for i in range(SIZES[split]):
                label = i % 2
                text = sentence(self.rng, GOOD[i % 5] if label else BAD[i % 5])
                if i == 1:
                    text = '" unlike its title , it is ' + text  # an unbalanced quote starts the text
                lines.append(f"{text}\t{label}")
                self.expect("sst-2", split, {"text": text}, label)
            tsv(folder / f"{split}.tsv", lines)
        tsv(folder / "test.tsv", ["index\tsentence", "0\tthe dog sat"])

    def mrpc(self):
        folder = self.root / "glue" / "MRPC"
        for split in ("train", "dev"):
            lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
            for i in range(SIZES[split]):
                label = i % 2
                a = sentence(self.rng, GOOD[i % 5])
                b = sentence(self.rng, GOOD[(i + 1) % 5] if label else BAD[i % 5])
                lines.append(f"{label}\t{1000 + i}\t{2000 + i}\t{a}\t{b}")
                self.expect("mrpc", split, {"a": a, "b": b}, label)
            tsv(folder / f"{split}.tsv", lines, bom=split == "train")  # msr_paraphrase_train.txt's BOM
        tsv(folder / "test.tsv", ["index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\ta dog\ta cat"])

    def qqp(self):
        folder = self.root / "glue" / "QQP"
        for split in ("train", "dev"):
            lines = ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"]
            for i in range(SIZES[split]):
                label = i % 2
                a = sentence(self.rng, GOOD[i % 5]) + "?"
                b = sentence(self.rng, GOOD[(i + 2) % 5] if label else BAD[i % 5]) + "?"
                if i == 0:
                    a = '"What is ""the"" best way?"'  # CSV-style quotes are text here, kept as written
                    b = 'Is a "dog\n'.rstrip("\n") + ' a pet?'
                lines.append(f"{i}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\t{label}")
                self.expect("qqp", split, {"a": a, "b": b}, label)
            lines.insert(3, "999\t1\t2\tonly one question\t1")  # a row of the wrong width: skipped
            tsv(folder / f"{split}.tsv", lines)
        tsv(folder / "test.tsv", ["id\tquestion1\tquestion2", "0\tis it\tis it\tnot"])

    def stsb(self):
        folder = self.root / "glue" / "STS-B"
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        scores = ["5.000", "0.000", "3.800", "1.250", "4.4", "2"]
        for split in ("train", "dev"):
            lines = [header]
            for i in range(SIZES[split]):
                score = scores[i % len(scores)]
                a, b = sentence(self.rng), sentence(self.rng)
                lines.append(f"{i}\tmain-captions\tMSRvid\t2012test\t{i:04d}\tnone\tnone\t{a}\t{b}\t{score}")
                self.expect("sts-b", split, {"a": a, "b": b}, float(score))
            tsv(folder / f"{split}.tsv", lines)
        tsv(folder / "test.tsv", [header.rsplit("\t", 1)[0], "0\tmain-news\tx\t2017\t0001\tnone\tnone\ta b\tc d"])

    def pair_glue(self, name: str, folder_name: str, cols: tuple[str, str]):
        folder = self.root / "glue" / folder_name
        for split in ("train", "dev", "test"):
            lines = [f"index\t{cols[0]}\t{cols[1]}" + ("" if split == "test" else "\tlabel")]
            for i in range(SIZES[split] if split != "test" else 2):
                label = ("entailment", "not_entailment")[i % 2]
                p = sentence(self.rng)
                h = sentence(self.rng, GOOD[i % 5] if i % 2 == 0 else BAD[i % 5])
                lines.append(f"{i}\t{p}\t{h}" + ("" if split == "test" else f"\t{label}"))
                if split != "test":
                    self.expect(name, split, {"premise": p, "hypothesis": h}, label)
            tsv(folder / f"{split}.tsv", lines)

    def mnli_glue(self):
        folder = self.root / "glue" / "MNLI"
        base = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t" \
               "sentence2_parse\tsentence1\tsentence2"
        for split in ("train", "dev_matched", "dev_mismatched"):
            extra = "\tlabel1\tgold_label" if split == "train" else "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
            lines = [base + extra]
            for i in range(SIZES["train" if split == "train" else "dev"]):
                label = ("entailment", "neutral", "contradiction")[i % 3]
                p = sentence(self.rng)
                h = sentence(self.rng, {"entailment": GOOD[i % 5], "contradiction": BAD[i % 5]}.get(label))
                labels = [label] * extra.count("\t")
                lines.append(f"{i}\t{i}\t{i}e\tfiction\t( {p} )\t( {h} )\t(ROOT {p})\t(ROOT {h})\t{p}\t{h}\t"
                             + "\t".join(labels))
                self.expect("mnli", split, {"premise": p, "hypothesis": h}, label)
            tsv(folder / f"{split}.tsv", lines)

    # --- NLI JSONL, SciTail ----------------------------------------------------------------------

    def snli(self, folder: Path, task: str, prefix: str, splits: tuple[str, ...]):
        for split in splits:
            records = []
            for i in range(SIZES["train" if split == "train" else "dev"] + 2):
                p = sentence(self.rng)
                if i in (3, 7):
                    records.append({"annotator_labels": ["neutral", "contradiction"], "gold_label": "-",
                                    "sentence1": p, "sentence2": "no consensus", "pairID": f"x{i}"})
                    continue
                label = ("entailment", "neutral", "contradiction")[i % 3]
                h = sentence(self.rng, {"entailment": GOOD[i % 5], "contradiction": BAD[i % 5]}.get(label))
                records.append({"annotator_labels": [label], "captionID": f"{i}.jpg#0", "gold_label": label,
                                "pairID": f"{i}r1n", "sentence1": p, "sentence1_binary_parse": "( x )",
                                "sentence1_parse": "(ROOT x)", "sentence2": h, "sentence2_binary_parse": "( y )",
                                "sentence2_parse": "(ROOT y)"})
                self.expect(task, split, {"premise": p, "hypothesis": h}, label)
            jsonl(folder / f"{prefix}_{split}.jsonl", records)

    def scitail(self):
        folder = self.root / "SciTailV1.1" / "tsv_format"
        for split in ("train", "dev", "test"):
            lines = []
            for i in range(SIZES[split]):
                label = ("entails", "neutral")[i % 2]
                p, h = sentence(self.rng), sentence(self.rng, GOOD[i % 5] if i % 2 == 0 else BAD[i % 5])
                lines.append(f"{p}\t{h}\t{label}")
                self.expect("scitail", split, {"premise": p, "hypothesis": h}, label)
            tsv(folder / f"scitail_1.0_{split}.tsv", lines)

    # --- RACE, story cloze -----------------------------------------------------------------------

    def race(self):
        for split in ("train", "dev", "test"):
            for level in ("middle", "high"):
                folder = self.root / "RACE" / split / level
                folder.mkdir(parents=True, exist_ok=True)
                n_files = 3 if split == "train" else 2
                for number in (1, 2, 10)[:n_files]:  # read in numeric order: 1, 2, 10
                    article = " ".join(sentence(self.rng) + "." for _ in range(3))
                    questions, options, answers = [], [], []
                    for q in range(2):
                        right = self.rng.randrange(4)
                        opts = [sentence(self.rng, GOOD[k] if k == right else BAD[k], 2) for k in range(4)]
                        question = f"What did the {level} farmer see _ ?" if q else "Which is true?"
                        questions.append(question)
                        options.append(opts)
                        answers.append("ABCD"[right])
                        fields = {"context": f"{article} {question}", "choices": opts}
                        for name in (split, f"{split}-{level}"):
                            self.expect("race", name, fields, right)
                    (folder / f"{number}.txt").write_text(json.dumps(
                        {"answers": answers, "options": options, "questions": questions, "article": article,
                         "id": f"{level}{number}.txt"}), encoding="utf-8")

    def story_cloze(self):
        folder = self.root / "ROCStories"
        folder.mkdir(parents=True, exist_ok=True)
        names = {"val": "cloze_test_val__spring2016 - cloze_test_ALL_val.csv",
                 "test": "cloze_test_test__spring2016 - cloze_test_ALL_test.csv"}
        for split, n in (("val", 12), ("test", 6)):
            with open(folder / names[split], "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                                 "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"])
                for i in range(n):
                    sents = [sentence(self.rng).capitalize() + "." for _ in range(4)]
                    if i == 0:
                        sents[1] = 'Tom said, "hello, friend."'  # commas and quotes: CSV-quoted in the file
                    right = 1 + i % 2
                    endings = [sentence(self.rng, GOOD[i % 5]) + ".", sentence(self.rng, BAD[i % 5]) + "."]
                    if right == 2:
                        endings.reverse()
                    writer.writerow([f"id-{i}", *sents, *endings, right])
                    self.expect("story-cloze", split, {"context": " ".join(sents), "choices": endings}, right - 1)

    def all(self) -> "Layouts":
        self.cola(), self.sst2(), self.mrpc(), self.qqp(), self.stsb()
        self.pair_glue("qnli", "QNLI", ("question", "sentence"))
        self.pair_glue("rte", "RTE", ("sentence1", "sentence2"))
        self.mnli_glue()
        self.snli(self.root / "snli_1.0", "snli", "snli_1.0", ("train", "dev", "test"))
        self.scitail(), self.race(), self.story_cloze()
        return self


def write_layouts(root: Path, only: tuple[str, ...] | None = None) -> Layouts:
    """Every dataset under ``root`` in its published layout (``only``: just those tasks)."""
    layouts = Layouts(root).all()
    if only is not None:
        import shutil

        for task in TASKS:
            folder = find_folder(task, root)
            if task.name not in only and folder is not None:
                shutil.rmtree(folder)
    return layouts


def read(task: str, root: Path, split: str, **kw):
    return [(row.fields, row.label) for row in read_split(get_task(task), find_folder(get_task(task), root), split, **kw).rows]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_layouts(tmp_path_factory.mktemp("paper-layouts"))


# ---------------------------------------------------------------------------------------------
# Exact records


def test_every_split_reads_exactly_the_rows_written(layouts):
    assert {name for name, _ in layouts.expected} == {t.name for t in TASKS}
    for (name, split), expected in layouts.expected.items():
        got = read(name, layouts.root, split)
        assert got == expected, (name, split)
        assert all(type(g[1]) is type(e[1]) for g, e in zip(got, expected)), (name, split)  # 1 stays 1, 3.8 a float


def test_quirks(layouts):
    root = layouts.root
    cola = read("cola", root, "train")
    assert cola[2] == ({"text": 'He said "so\tbe it" then'}, 0)  # no header; tab and quote kept in the sentence
    assert not any("\r" in f["text"] for f, _ in read("cola", root, "dev"))  # its CRLF line ends are stripped
    qqp = read_split(get_task("qqp"), root / "glue" / "QQP", "train")
    assert qqp.rows[0].fields == {"a": '"What is ""the"" best way?"', "b": 'Is a "dog a pet?'}
    assert qqp.dropped == {"rows of the wrong width": 1} and len(qqp.rows) == SIZES["train"]
    assert qqp.rows[1].where.endswith("QQP/train.tsv:3") and qqp.rows[2].where.endswith("QQP/train.tsv:5")
    snli = read_split(get_task("snli"), root / "snli_1.0", "train")
    assert snli.dropped == {"gold_label '-'": 2} and len(snli.rows) == SIZES["train"]
    stsb = read("sts-b", root, "dev")
    assert [label for _, label in stsb] == [5.0, 0.0, 3.8, 1.25, 4.4, 2.0]
    race = read("race", root, "test-middle")
    assert len(race) == 4 and all(len(f["choices"]) == 4 for f, _ in race)
    assert len(read("race", root, "test")) == 8 and read("race", root, "test")[:4] == race
    cloze = read("story-cloze", root, "val")
    assert cloze[0][0]["context"].count('Tom said, "hello, friend."') == 1  # a quoted cell with commas, kept whole
    assert [label for _, label in cloze] == [0, 1] * 6
    # the records as our JSONL holds them: the fields, the label, the source line
    row = read_split(get_task("mrpc"), root / "glue" / "MRPC", "train").rows[0]
    assert row.record() == {**row.fields, "label": 0, "source": f"{root / 'glue' / 'MRPC' / 'train.tsv'}:2"}


def test_unlabelled_test_files_read_without_labels(layouts):
    root = layouts.root
    for name, n in (("cola", 2), ("sst-2", 1), ("mrpc", 1), ("sts-b", 1), ("qnli", 2), ("rte", 2)):
        split = read_split(get_task(name), find_folder(get_task(name), root), "test", labelled=False)
        assert len(split.rows) == n and not split.labelled, name
    qqp = read_split(get_task("qqp"), root / "glue" / "QQP", "test", labelled=False)
    assert qqp.rows[0].fields == {"a": "is it", "b": "is it\tnot"}  # extra tabs belong to the last text column


def test_hold_out_splits_partition_the_training_rows(layouts):
    root = layouts.root
    for name, split in (("cola", "train"), ("story-cloze", "val"), ("mnli", "train")):
        task = get_task(name)
        folder = find_folder(task, root)
        whole = read(name, root, split)
        rest, held = read(name, root, f"{split}:rest"), read(name, root, f"{split}:held")
        assert len(rest) + len(held) == len(whole) and len(held) == len(hold_out(len(whole), 0.2 if name == "story-cloze" else None))
        assert [r for r in whole if r in held or r in rest] == whole
        assert read(name, root, f"{split}:held") == held  # the same draw every time
        assert folder is not None
    assert len(hold_out(1871, 0.2)) == 374 and len(hold_out(393_000)) == 2000 and len(hold_out(12)) == 2


def test_multinli_jsonl_layout_and_race_tree(tmp_path):
    layouts = Layouts(tmp_path)
    layouts.snli(tmp_path / "multinli_1.0", "mnli", "multinli_1.0", ("train", "dev_matched", "dev_mismatched"))
    task = get_task("MultiNLI")
    assert find_folder(task, tmp_path) == tmp_path / "multinli_1.0"
    for split in ("train", "dev_matched", "dev_mismatched"):
        assert read("mnli", tmp_path, split) == layouts.expected[("mnli", split)]


def test_registry_matches_the_paper():
    figures = {s.row: s.paper for t in TASKS for s in t.scores}
    assert figures == {"MNLI-m": 82.1, "MNLI-mm": 81.4, "SNLI": 89.9, "SciTail": 88.3, "QNLI": 88.1, "RTE": 56.0,
                       "Story Cloze": 86.5, "RACE-m": 62.9, "RACE-h": 57.4, "RACE": 59.0, "CoLA": 45.4,
                       "SST-2": 91.3, "MRPC": 82.3, "STS-B": 82.0, "QQP": 70.3}
    kinds = {t.name: t.kind for t in TASKS}
    assert kinds == {"mnli": "entail", "snli": "entail", "scitail": "entail", "qnli": "entail", "rte": "entail",
                     "story-cloze": "mcq", "race": "mcq", "cola": "classify", "sst-2": "classify",
                     "mrpc": "similar", "sts-b": "similar", "qqp": "similar"}
    metrics = {t.name: t.metrics[0] for t in TASKS}
    assert metrics["cola"] == "mcc" and metrics["mrpc"] == metrics["qqp"] == "f1" and metrics["sts-b"] == "pearson"
    assert get_task("sts-b").regression and get_task("STS-B") is get_task("stsb")
    assert {t.table for t in TASKS if t.name in ("mnli", "snli", "scitail", "qnli", "rte")} == {2}
    assert all(t.settings() == {"lr": 6.25e-5, "batch_size": 32, "epochs": 3, "warmup_fraction": 0.002,
                                "lm_coef": 0.5, "head_dropout": 0.1} for t in TASKS)
    assert set(SUITES["all"]) == {t.name for t in TASKS} and len(SUITES["glue"]) == 8


# ---------------------------------------------------------------------------------------------
# Bad input: one error naming the file and what was expected


def error_of(task: str, folder: Path, split: str) -> str:
    with pytest.raises(Gpt1Error) as info:
        read_split(get_task(task), folder, split)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_split_files(tmp_path):
    (tmp_path / "CoLA").mkdir()
    message = error_of("cola", tmp_path / "CoLA", "train")
    assert f"missing {tmp_path / 'CoLA' / 'train.tsv'}" in message and "no header" in message
    (tmp_path / "RACE" / "train" / "middle").mkdir(parents=True)
    message = error_of("race", tmp_path / "RACE", "train")
    assert str(tmp_path / "RACE" / "train" / "middle") in message and "no .txt question files" in message
    message = error_of("race", tmp_path / "RACE", "dev")
    assert f"missing the folder {tmp_path / 'RACE' / 'dev' / 'middle'}" in message
    (tmp_path / "ROCStories").mkdir()
    assert "ends in val.csv" in error_of("story-cloze", tmp_path / "ROCStories", "val")
    (tmp_path / "MNLI").mkdir()
    assert "neither multinli_1.0_train.jsonl nor train.tsv" in error_of("mnli", tmp_path / "MNLI", "train")
    assert "not a folder" in error_of("snli", tmp_path / "nowhere", "train")
    assert "no split 'validation'" in error_of("snli", tmp_path, "validation")


def test_header_that_does_not_match_the_layout(tmp_path):
    path = tsv(tmp_path / "MRPC" / "train.tsv", ["Quality\t#1 String\t#2 String", "1\ta\tb"])
    message = error_of("mrpc", tmp_path / "MRPC", "train")
    assert f"{path}:1: header" in message and "Quality\\t#1 ID\\t#2 ID\\t#1 String\\t#2 String" in message
    path = tsv(tmp_path / "QQP" / "train.tsv", ["id\tq1\tq2\tis_duplicate", "1\ta\tb\t0"])
    assert f"{path}:1: header" in error_of("qqp", tmp_path / "QQP", "train")
    path = tsv(tmp_path / "QQP" / "dev.tsv", ["id\tquestion1\tquestion2", "1\ta\tb"])
    message = error_of("qqp", tmp_path / "QQP", "dev")
    assert str(path) in message and "no 'is_duplicate' column" in message and "unlabelled" in message
    folder = tmp_path / "ROCStories"
    folder.mkdir()
    (folder / "x_val.csv").write_text("id,sentence,ending\n1,a,b\n", encoding="utf-8")
    message = error_of("story-cloze", folder, "val")
    assert f"{folder / 'x_val.csv'}:1: header lacks InputStoryid" in message
    # CoLA's train file has no header: a header-like first line is refused by its label
    path = tsv(tmp_path / "CoLA" / "train.tsv", ["source\tlabel\tmark\tsentence", "gj04\t1\t\tok"])
    message = error_of("cola", tmp_path / "CoLA", "train")
    assert f"{path}:1: label 'label' is not one of 0, 1" in message and "the first line is data, not a header" in message


def test_label_outside_the_label_set(tmp_path):
    path = jsonl(tmp_path / "snli_1.0" / "snli_1.0_train.jsonl",
                 [{"sentence1": "a", "sentence2": "b", "gold_label": "entailment"},
                  {"sentence1": "a", "sentence2": "b", "gold_label": "entails"}])
    message = error_of("snli", tmp_path / "snli_1.0", "train")
    assert message.startswith(f"{path}:2: label 'entails' is not one of entailment, neutral, contradiction")
    path = tsv(tmp_path / "SciTailV1.1" / "tsv_format" / "scitail_1.0_dev.tsv", ["a\tb\tentails", "a\tb\tcontradiction"])
    assert f"{path}:2: label 'contradiction' is not one of entails, neutral" in error_of("scitail", tmp_path / "SciTailV1.1", "dev")
    path = tsv(tmp_path / "STS-B" / "train.tsv", ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1"
                                                  "\tsentence2\tscore", "0\tg\tf\ty\t0\ts\ts\ta\tb\t5.5"])
    assert f"{path}:2: score '5.5' is not a number from 0 to 5" in error_of("sts-b", tmp_path / "STS-B", "train")
    path = tsv(tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tneutral"])
    assert f"{path}:2: label 'neutral' is not one of entailment, not_entailment" in error_of("rte", tmp_path / "RTE", "dev")
    race = tmp_path / "RACE" / "dev" / "middle"
    race.mkdir(parents=True)
    (race / "1.txt").write_text(json.dumps({"article": "x", "questions": ["q"], "options": [["a", "b", "c", "d"]],
                                            "answers": ["E"]}))
    (tmp_path / "RACE" / "dev" / "high").mkdir()
    assert f"{race / '1.txt'} question 1: answer 'E' is not one of A, B, C, D" in error_of("race", tmp_path / "RACE", "dev")
    (race / "1.txt").write_text(json.dumps({"article": "x", "questions": ["q"], "options": [["a", "b", "c"]],
                                            "answers": ["A"]}))
    assert "expected four options" in error_of("race", tmp_path / "RACE", "dev")
    folder = tmp_path / "ROCStories"
    folder.mkdir()
    with open(folder / "a_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                         "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"])
        writer.writerow(["x", "a", "b", "c", "d", "e", "f", "3"])
    assert f"{folder / 'a_test.csv'}:2: label '3' is not one of 1, 2" in error_of("story-cloze", folder, "test")


def test_empty_split_and_wrong_width(tmp_path):
    path = tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel"])
    message = error_of("sst-2", tmp_path / "SST-2", "dev")
    assert message == f"{path}: the SST-2 dev split holds no examples"
    path = jsonl(tmp_path / "snli_1.0" / "snli_1.0_dev.jsonl", [{"sentence1": "a", "sentence2": "b", "gold_label": "-"}])
    assert error_of("snli", tmp_path / "snli_1.0", "dev") == f"{path}: the SNLI dev split holds no examples, 1 dropped (gold_label '-')"
    path = tsv(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tentailment"])
    assert f"{path}:2: 3 tab-separated fields, expected 4" in error_of("rte", tmp_path / "RTE", "train")
    path = tsv(tmp_path / "CoLA" / "dev.tsv", ["gj04\t1\tok"])
    assert f"{path}:2" not in (m := error_of("cola", tmp_path / "CoLA", "dev")) and f"{path}:1: 3 tab-separated" in m
    path = tsv(tmp_path / "QNLI" / "train.tsv", ["index\tquestion\tsentence\tlabel", "0\ta\tb\tentailment"])
    assert "too few to hold some out" in error_of("qnli", tmp_path / "QNLI", "train:held")
    (tmp_path / "SST-2" / "train.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe\t1\n")
    assert f"{tmp_path / 'SST-2' / 'train.tsv'}:2: invalid UTF-8" in error_of("sst-2", tmp_path / "SST-2", "train")
