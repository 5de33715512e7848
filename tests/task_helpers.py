"""Shared helpers of the fine-tuning / evaluation tests (``tests/test_tasks_*.py``).

Everything is generated at run time from seeded word lists. The expensive artefacts are built
once per test session by :func:`task_assets` and cached in this module:

* a corpus over :data:`WORDS` (the signal words included, so the tokenizer learns them), its
  shards and a tokenizer of :data:`VOCAB` pieces;
* ``run``: a few pre-training steps of the tiny preset (context :data:`N_CTX`);
* ``memo_run``: the same tokenizer, pre-trained with a high learning rate on a handful of
  sentences repeated many times, so it has memorised them (for zero-shot scoring).

Fine-tuned runs of each task are built on first use by :func:`finetuned` and cached too. Tests
treat all cached artefacts as read-only.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent

# Neutral words, and words that carry a label. Every task label below is signalled by words of
# one group only, so a tiny model can separate the classes in a few steps.
WORDS = (
    "the a one some cat dog bird fox horse child farmer river garden house road village city forest "
    "hill window door table book letter song morning evening night sat ran walked sang read wrote saw "
    "found made kept slowly quietly under over near behind with and then old young small large green"
).split()
POS_WORDS = "sunny joyful golden lovely cheerful".split()
NEG_WORDS = "stormy gloomy bitter broken awful".split()
ALL_WORDS = WORDS + POS_WORDS + NEG_WORDS

VOCAB = 480
N_CTX = 48
RUN_STEPS = 6

# The memorised corpus: fixed sentences, each one document, repeated in a fixed cycle.
MEMO_SENTENCES = [
    "the old farmer walked slowly over the green hill with his dog",
    "a young child read one lovely book near the window every morning",
    "some small birds sang quietly behind the large house at night",
    "the cheerful fox ran under the golden door of the village",
]
MEMO_REPEATS = 60
MEMO_STEPS = 120


# ---------------------------------------------------------------------------------------------
# Threads and running the CLI: shared with the pipeline tests.

from helpers import CliResult, assert_one_error_line, one_torch_thread, run_main, single_thread_module  # noqa: E402,F401
from helpers import run_subprocess as _run_subprocess  # noqa: E402


def run_subprocess(argv: list, *, timeout: float = 180) -> CliResult:
    """``python -m gpt1cli ARGV`` in a separate process, from the repository root."""
    return _run_subprocess(argv, cwd=REPO, timeout=timeout)


def assert_refused_option(result: CliResult, option: str, reason: str) -> str:
    """A number refused at parse time: exit 2, one ``error:`` line naming the option and why, no traceback."""
    assert result.code == 2, f"exit code {result.code}, stderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("error: ") and option in line and reason in line, line
    return line


def assert_ok(result: CliResult) -> CliResult:
    assert result.code == 0, f"exit {result.code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    return result


# ---------------------------------------------------------------------------------------------
# Task data


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]


def _with_signal(rng: random.Random, words: list[str], signal: str) -> str:
    words = list(words)
    words.insert(rng.randint(0, len(words)), signal)
    return " ".join(words)


def classify_examples(n: int, seed: int) -> list[dict]:
    """``pos`` texts are made of POS words only, ``neg`` texts of NEG words only: trivially
    separable by the words themselves. Balanced, shuffled."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        group = POS_WORDS if label == "pos" else NEG_WORDS
        rows.append({"text": " ".join(rng.choice(group) for _ in range(rng.randint(3, 6))), "label": label})
    rng.shuffle(rows)
    return rows


def entail_examples(n: int, seed: int) -> list[dict]:
    """Three string classes; the hypothesis holds a POS word (entailment), a NEG word
    (contradiction) or neither (neutral)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("entailment", "contradiction", "neutral")[i % 3]
        words = _words(rng, 2, 5)
        if label == "entailment":
            hypothesis = _with_signal(rng, words, rng.choice(POS_WORDS))
        elif label == "contradiction":
            hypothesis = _with_signal(rng, words, rng.choice(NEG_WORDS))
        else:
            hypothesis = " ".join(words)
        rows.append({"premise": " ".join(_words(rng, 3, 7)), "hypothesis": hypothesis, "label": label})
    rng.shuffle(rows)
    return rows


def similar_examples(n: int, seed: int, *, regression: bool = False) -> list[dict]:
    """``same`` pairs share a POS word, ``diff`` pairs do not; with ``regression`` the label is a score."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        same = i % 2 == 0
        a = _with_signal(rng, _words(rng, 2, 5), rng.choice(POS_WORDS))
        b = _with_signal(rng, _words(rng, 2, 5), rng.choice(POS_WORDS if same else NEG_WORDS))
        label = (round(rng.uniform(3.0, 5.0), 2) if same else round(rng.uniform(0.0, 2.0), 2)) if regression else (
            "same" if same else "diff")
        rows.append({"a": a, "b": b, "label": label})
    rng.shuffle(rows)
    return rows


def mcq_examples(n: int, seed: int, n_choices: int = 3) -> list[dict]:
    """The right choice holds a POS word, the others NEG words; labels are indices."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        right = rng.randrange(n_choices)
        choices = [_with_signal(rng, _words(rng, 1, 3), rng.choice(POS_WORDS if k == right else NEG_WORDS))
                   for k in range(n_choices)]
        rows.append({"context": " ".join(_words(rng, 3, 7)), "choices": choices, "label": right})
    return rows


MAKERS = {
    "classify": classify_examples,
    "entail": entail_examples,
    "similar": similar_examples,
    "mcq": mcq_examples,
}


def write_task_jsonl(path: Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def write_task_csv(path: Path, rows: list[dict], *, choice_columns: bool = False) -> Path:
    """CSV; mcq choices as a JSON ``choices`` column, or as ``choice_0..`` columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out_rows = []
    for row in rows:
        row = dict(row)
        if "choices" in row:
            choices = row.pop("choices")
            if choice_columns:
                row.update({f"choice_{k}": c for k, c in enumerate(choices)})
            else:
                row["choices"] = json.dumps(choices)
        out_rows.append(row)
    columns = list(out_rows[0])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(out_rows)
    return path


def write_task_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def checkpoint_meta(run: Path) -> dict:
    run = Path(run)
    name = (run / "checkpoints" / "latest").read_text().strip()
    return json.loads((run / "checkpoints" / name / "checkpoint.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Session artefacts


@dataclass
class TaskAssets:
    root: Path
    corpus: Path
    shards: Path
    run: Path  # pre-trained, no task head
    memo_run: Path  # memorised MEMO_SENTENCES
    data: dict = field(default_factory=dict)  # (task, split) -> jsonl path
    runs: dict = field(default_factory=dict)  # task name -> fine-tuned run

    @property
    def tokenizer(self) -> Path:
        return self.shards / "tokenizer.model"


_CACHE: dict = {}


def _corpus_docs(n_docs: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(ALL_WORDS) for _ in range(rng.randint(4, 10))]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(" ".join(sentences))
    # every signal word and the memorised sentences appear, so the tokenizer keeps them whole
    docs.append(" ".join(w.capitalize() + "." for w in POS_WORDS + NEG_WORDS))
    docs.extend(s.capitalize() + "." for s in MEMO_SENTENCES)
    return docs


def task_assets(tmp_path_factory) -> TaskAssets:
    """Build (once per session) the corpus, shards, tokenizer and the two pre-trained runs."""
    if "assets" in _CACHE:
        return _CACHE["assets"]
    with one_torch_thread():
        assets = _build(tmp_path_factory.mktemp("task-assets"))
    _CACHE["assets"] = assets
    return assets


def _build(root: Path) -> TaskAssets:
    from gpt1cli.data.pipeline import tokenize_corpus
    from gpt1cli.train.pretrain import PretrainConfig, pretrain

    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(_corpus_docs(120, seed=7)) + "\n", encoding="utf-8")
    shards = root / "shards"
    tokenize_corpus([str(corpus)], shards, vocab_size=VOCAB, tokens_per_shard=4000, val_fraction=0.1, seed=0,
                    num_threads=1, show_progress=False)
    run = root / "run"
    pretrain(PretrainConfig(shards=str(shards), out=str(run), preset="tiny", n_ctx=N_CTX, steps=RUN_STEPS,
                            batch_size=4, lr=3e-3, eval_every=RUN_STEPS, eval_tokens=256, ckpt_every=RUN_STEPS,
                            log_every=1, keep=1, seed=0, device="cpu"), show_progress=False)

    memo_corpus = root / "memo.txt"
    memo_corpus.write_text("\n\n".join(s.capitalize() + "." for _ in range(MEMO_REPEATS) for s in MEMO_SENTENCES) + "\n",
                           encoding="utf-8")
    memo_shards = root / "memo_shards"
    tokenize_corpus([str(memo_corpus)], memo_shards, tokenizer=shards / "tokenizer.model", tokens_per_shard=100_000,
                    val_fraction=0.05, seed=0, num_threads=1, show_progress=False)
    memo_run = root / "memo_run"
    pretrain(PretrainConfig(shards=str(memo_shards), out=str(memo_run), preset="tiny", n_ctx=32, steps=MEMO_STEPS,
                            batch_size=8, lr=5e-3, warmup=10, dropout=0.0, eval_every=MEMO_STEPS, eval_tokens=256,
                            ckpt_every=MEMO_STEPS, log_every=20, keep=1, seed=0, device="cpu"), show_progress=False)
    return TaskAssets(root, corpus, shards, run, memo_run)


def task_file(assets: TaskAssets, task: str, split: str) -> Path:
    """A cached JSONL file of ``task`` (``similar-reg`` for the regression variant): train 32, val/test 16."""
    key = (task, split)
    if key not in assets.data:
        n, seed = {"train": (32, 1), "val": (15, 2), "test": (16, 3)}[split]
        if task == "similar-reg":
            rows = similar_examples(n, seed, regression=True)
        else:
            rows = MAKERS[task](n, seed)
        assets.data[key] = write_task_jsonl(assets.root / "data" / f"{task}-{split}.jsonl", rows)
    return assets.data[key]


FINETUNE_ARGS = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--device", "cpu", "--quiet"]


def finetuned(assets: TaskAssets, task: str) -> Path:
    """A cached fine-tuned run of ``task`` (``similar-reg``: similar with --regression), via the library."""
    if task not in assets.runs:
        from gpt1cli.tasks.finetune import FinetuneConfig, finetune

        name = "similar" if task == "similar-reg" else task
        out = assets.root / "ft" / task
        with one_torch_thread():
            finetune(FinetuneConfig(task=name, train=str(task_file(assets, task, "train")),
                                    val=str(task_file(assets, task, "val")), from_run=str(assets.run), out=str(out),
                                    regression=task == "similar-reg", lr=1e-3, batch_size=16, epochs=1, device="cpu"),
                     show_progress=False)
        assets.runs[task] = out
    return assets.runs[task]
