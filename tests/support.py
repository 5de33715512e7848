"""What the tests share: word lists, corpus and task-file writers, the CLI runners, readers of
what a run leaves, and the builders of the session artefacts (the fixtures in ``conftest.py``).

Everything is made at run time from fixed word lists and seeded RNGs. The expensive artefacts
are built once per test session by the fixtures of ``tests/conftest.py``:

* ``assets`` (:func:`build_assets`): a corpus over :data:`WORDS`, its shards (and tokenizer) and a
  short pre-training run of the tiny preset;
* ``task_assets`` (:func:`build_task_assets`): a corpus whose labels are signalled by
  :data:`POS_WORDS` / :data:`NEG_WORDS`, its shards, a short pre-training run and ``memo_run``, a run
  that has memorised :data:`MEMO_SENTENCES`; task files (:func:`task_file`) and fine-tuned runs
  (:func:`finetuned`) are made on first use and kept on it;
* ``toy_bpe``: a small BPE vocabulary and merges in the OpenAI release's format (:func:`learn_bpe`).

Tests treat these artefacts as read-only: copy them (``run_copy``, :func:`copy_shards`) to damage them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gpt1cli import runtime

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------
# Words

# A small closed vocabulary keeps the corpus repetitive, so a tiny model learns it in a few steps.
WORDS = (
    "the a one every some cat dog bird fox horse child teacher farmer river garden house road "
    "village city forest hill window door table book letter song morning evening night winter "
    "summer sat ran walked sang read wrote saw found made kept quickly slowly quietly loudly "
    "happily under over near behind beside with without and but then because old young small "
    "large green blue red bright dark warm cold"
).split()

# The words of the task corpus that carry no label: WORDS less those that could read as one.
NEUTRAL_WORDS = [w for w in WORDS if w not in (
    "every teacher winter summer quickly loudly happily beside without but because blue red bright dark warm cold"
).split()]
POS_WORDS = "sunny joyful golden lovely cheerful".split()
NEG_WORDS = "stormy gloomy bitter broken awful".split()

# English-like text for the BPE tokenizer tests: WORDS with an article, function words and numbers.
ENGLISH_WORDS = WORDS[:2] + ["an"] + WORDS[2:] + (
    "is was were have had will would could should their there where when which who whom this that these "
    "those between through during before after above below again further once here why how all any both "
    "each few more most other such only own same so than too very just 1990 42 7"
).split()
NAMES = "Alice Bob London Paris Monday October Thames Everest".split()


# ---------------------------------------------------------------------------------------------
# Corpora


def make_documents(n_docs: int, seed: int = 0, *, min_lines: int = 1, max_lines: int = 3) -> list[list[str]]:
    """``n_docs`` documents, each a list of 1-3 lines of 1-3 short sentences."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lines = []
        for _ in range(rng.randint(min_lines, max_lines)):
            sentences = []
            for _ in range(rng.randint(1, 3)):
                words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
                sentences.append(" ".join(words).capitalize() + ".")
            lines.append(" ".join(sentences))
        docs.append(lines)
    return docs


def write_txt(path: Path, docs: list[list[str]]) -> Path:
    """One line per entry, documents separated by one blank line, trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join("\n".join(lines) for lines in docs) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, docs: list[list[str]], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for lines in docs:
            handle.write(json.dumps({field: "\n".join(lines), "id": len(lines)}) + "\n")
    return path


def write_parquet(path: Path, docs: list[list[str]], column: str = "text") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({column: ["\n".join(lines) for lines in docs], "n": [len(lines) for lines in docs]})
    pq.write_table(table, path, row_group_size=16)
    return path


def write_sentences(path: Path, words: list[str], *, documents: int, length: int, seed: int = 0) -> Path:
    """``documents`` one-line documents of ``length`` words drawn from ``words``."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(documents):
            handle.write(" ".join(rng.choice(words) for _ in range(length)) + "\n\n")
    return path


def write_paragraphs(path: Path, *, seed: int, documents: int = 12, sentences: int = 8, length: int = 8) -> Path:
    """``documents`` one-line documents of ``sentences`` capitalised sentences of NEUTRAL_WORDS."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(" ".join(f"{' '.join(rng.choice(NEUTRAL_WORDS) for _ in range(length)).capitalize()}."
                                         for _ in range(sentences)) for _ in range(documents)) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# CPU threads: the test machine has two shared cores; one intra-op thread avoids oversubscription.


one_torch_thread = runtime.one_torch_thread


# ---------------------------------------------------------------------------------------------
# Running the CLI: in this process (run_main) or as a process of its own (run_subprocess, start_cli)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_main(argv: list, capsys) -> CliResult:
    """Run ``gpt1 ARGV`` in this process; exit code 0 when ``main`` returns normally."""
    from gpt1cli.cli.app import main

    capsys.readouterr()  # drop anything printed before
    code = 0
    try:
        result = main([str(a) for a in argv])
        if isinstance(result, int):  # click's standalone_mode=False returns the exit code of --help
            code = result
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # what the process would do: print the traceback, exit 1
        import traceback

        captured = capsys.readouterr()
        return CliResult(1, captured.out, captured.err + traceback.format_exc())
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def cli_env(**extra: str) -> dict:
    """The environment of a CLI process: wide plain output, one thread, no inherited torchrun rank."""
    env = dict(os.environ)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(name, None)
    env.update({"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore",
                "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def cli_command(*argv) -> list[str]:
    return [sys.executable, "-m", "gpt1cli", *[str(a) for a in argv]]


def start_cli(*argv, text: bool = False, env: dict | None = None, **popen) -> subprocess.Popen:
    """``python -m gpt1cli ARGV`` started from the repository root, its output piped."""
    popen.setdefault("cwd", REPO)
    return subprocess.Popen(cli_command(*argv), env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=text, **popen)


def run_subprocess(argv: list, *, timeout: float = 300, **popen) -> CliResult:
    """Run ``python -m gpt1cli ARGV`` as a separate process and wait for it."""
    with reaped(start_cli(*argv, text=True, **popen)) as process:
        out, err = process.communicate(timeout=timeout)
    return CliResult(process.returncode, out, err)


@contextlib.contextmanager
def reaped(process: subprocess.Popen):
    """Yield ``process``; on the way out, kill it if it still runs (a failed test leaves no orphan)."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def wait_for(condition, process: subprocess.Popen, timeout: float = 120, what: str = "the condition") -> None:
    """Poll ``condition()`` until it holds; fail if ``process`` ends or ``timeout`` passes first."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if condition():
            return
        time.sleep(0.02)
    if condition():
        return
    code = process.poll()
    err = process.stderr.read() if code is not None and process.stderr else ""
    raise AssertionError(f"{what} was not reached (exit {code}): {err}")


def assert_one_error_line(result: CliResult, *must_contain) -> str:
    """The failure contract: exit 2, exactly one ``error:`` line on stderr, no traceback."""
    assert result.code == 2, f"exit code {result.code}, stderr:\n{result.err}"
    assert "Traceback" not in result.err, result.err
    lines = result.err_lines
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{result.err}"
    line = lines[0]
    assert line.startswith("error: "), line
    for text in must_contain:
        assert str(text) in line, f"{text!r} not in {line!r}"
    return line


def assert_refused_option(result: CliResult, option: str, reason: str) -> str:
    """A number refused at parse time: the error line names the option and why."""
    return assert_one_error_line(result, option, reason)


def assert_ok(result: CliResult) -> CliResult:
    assert result.code == 0, f"exit {result.code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    return result


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# ---------------------------------------------------------------------------------------------
# Reading what a command leaves


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["kind"] == kind]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(run_dir, "train")}


def logged_steps(run_dir: Path) -> list[int]:
    """The training steps a running process has logged so far (a line it is still writing is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    steps = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train":
            steps.append(record["step"])
    return steps


def reached_step(run_dir: Path, step: int):
    """A condition for :func:`wait_for`: the run has logged training step ``step`` or a later one."""
    return lambda: any(s >= step for s in logged_steps(run_dir))


def latest_folder(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def checkpoint_meta(run: Path) -> dict:
    return json.loads((latest_folder(Path(run)) / "checkpoint.json").read_text(encoding="utf-8"))


def read_manifest(shard_dir: Path) -> dict:
    return json.loads((Path(shard_dir) / "manifest.json").read_text(encoding="utf-8"))


def split_tokens(shard_dir: Path, split: str) -> np.ndarray:
    """All tokens of a split, read with plain pyarrow (independently of the library's reader)."""
    import pyarrow as pa

    manifest = read_manifest(shard_dir)
    pieces = []
    for shard in manifest["splits"][split]["shards"]:
        with pa.memory_map(str(Path(shard_dir) / shard["file"]), "r") as source:
            table = pa.ipc.open_file(source).read_all()
            pieces.append(table.column("tokens").to_numpy().copy())
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)


def copy_shards(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Faults


def poison_forward(monkeypatch, is_bad) -> None:
    """Make the training forward pass return a NaN loss on the calls ``is_bad(n)`` (n counts from 1)."""
    from gpt1cli.model.gpt import GPT

    real_forward = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, **kwargs):
        out = real_forward(self, idx, **kwargs)
        if kwargs.get("targets") is not None and self.training:
            calls["n"] += 1
            if is_bad(calls["n"]):
                return out * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)


# ---------------------------------------------------------------------------------------------
# The pipeline's session artefacts (fixture ``assets``)

VOCAB = 400
TOKENS_PER_SHARD = 1500
VAL_FRACTION = 0.1
N_DOCS = 160
RUN_STEPS = 24
RUN_BATCH = 4
RUN_ARGS = ["--preset", "tiny", "--n-ctx", "32", "--steps", str(RUN_STEPS), "--batch-size", str(RUN_BATCH), "--lr", "3e-3",
            "--eval-every", "8", "--eval-tokens", "512", "--log-every", "1", "--ckpt-every", "8", "--keep", "2",
            "--seed", "0", "--device", "cpu", "--quiet"]


@dataclass
class Assets:
    root: Path
    docs: list[list[str]]
    corpus: Path  # the .txt corpus
    shards: Path  # tokenized with VOCAB, TOKENS_PER_SHARD, VAL_FRACTION, seed 0
    run: Path  # RUN_STEPS steps of the tiny preset on ``shards``
    run_argv: list[str]  # the pretrain arguments that made ``run`` (without --shards/--out)

    @property
    def tokenizer(self) -> Path:
        return self.shards / "tokenizer.model"


def build_assets(root: Path) -> Assets:
    """A corpus, its shards and a short pre-training run, made through the CLI."""
    from gpt1cli.cli.app import main

    docs = make_documents(N_DOCS, seed=1234)
    corpus = write_txt(root / "corpus" / "corpus.txt", docs)
    shards = root / "shards"
    with one_torch_thread():
        main(["tokenize", str(corpus), "--out", str(shards), "--vocab-size", str(VOCAB),
              "--tokens-per-shard", str(TOKENS_PER_SHARD), "--val-fraction", str(VAL_FRACTION),
              "--seed", "0", "--threads", "1", "--quiet"])
        run = root / "run"
        main(["pretrain", "--shards", str(shards), "--out", str(run), *RUN_ARGS])
    return Assets(root, docs, corpus, shards, run, list(RUN_ARGS))


# ---------------------------------------------------------------------------------------------
# Task data: every label is signalled by words of one group only, so a tiny model separates the
# classes in a few steps.


def _words(rng: random.Random, lo: int, hi: int) -> list[str]:
    return [rng.choice(NEUTRAL_WORDS) for _ in range(rng.randint(lo, hi))]


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


# ---------------------------------------------------------------------------------------------
# The task tests' session artefacts (fixture ``task_assets``)

TASK_VOCAB = 480
TASK_N_CTX = 48
TASK_RUN_STEPS = 6

# The memorised corpus: fixed sentences, each one document, repeated in a fixed cycle.
MEMO_SENTENCES = [
    "the old farmer walked slowly over the green hill with his dog",
    "a young child read one lovely book near the window every morning",
    "some small birds sang quietly behind the large house at night",
    "the cheerful fox ran under the golden door of the village",
]
MEMO_REPEATS = 60
MEMO_STEPS = 120

FINETUNE_ARGS = ["--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--device", "cpu", "--quiet"]


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


def _task_corpus_docs(n_docs: int, seed: int) -> list[str]:
    words = NEUTRAL_WORDS + POS_WORDS + NEG_WORDS
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            sentence = [rng.choice(words) for _ in range(rng.randint(4, 10))]
            sentences.append(" ".join(sentence).capitalize() + ".")
        docs.append(" ".join(sentences))
    # every signal word and the memorised sentences appear, so the tokenizer keeps them whole
    docs.append(" ".join(w.capitalize() + "." for w in POS_WORDS + NEG_WORDS))
    docs.extend(s.capitalize() + "." for s in MEMO_SENTENCES)
    return docs


def build_task_assets(root: Path) -> TaskAssets:
    """The corpus, shards, tokenizer and the two pre-trained runs, made through the library."""
    from gpt1cli.data.pipeline import tokenize_corpus
    from gpt1cli.train.pretrain import PretrainConfig, pretrain

    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(_task_corpus_docs(120, seed=7)) + "\n", encoding="utf-8")
    shards = root / "shards"
    memo_corpus = root / "memo.txt"
    memo_corpus.write_text("\n\n".join(s.capitalize() + "." for _ in range(MEMO_REPEATS) for s in MEMO_SENTENCES) + "\n",
                           encoding="utf-8")
    memo_shards = root / "memo_shards"
    run, memo_run = root / "run", root / "memo_run"
    with one_torch_thread():
        tokenize_corpus([str(corpus)], shards, vocab_size=TASK_VOCAB, tokens_per_shard=4000, val_fraction=0.1, seed=0,
                        num_threads=1, show_progress=False)
        pretrain(PretrainConfig(shards=str(shards), out=str(run), preset="tiny", n_ctx=TASK_N_CTX, steps=TASK_RUN_STEPS,
                                batch_size=4, lr=3e-3, eval_every=TASK_RUN_STEPS, eval_tokens=256,
                                ckpt_every=TASK_RUN_STEPS, log_every=1, keep=1, seed=0, device="cpu"),
                 show_progress=False)
        tokenize_corpus([str(memo_corpus)], memo_shards, tokenizer=shards / "tokenizer.model", tokens_per_shard=100_000,
                        val_fraction=0.05, seed=0, num_threads=1, show_progress=False)
        pretrain(PretrainConfig(shards=str(memo_shards), out=str(memo_run), preset="tiny", n_ctx=32, steps=MEMO_STEPS,
                                batch_size=8, lr=5e-3, warmup=10, dropout=0.0, eval_every=MEMO_STEPS, eval_tokens=256,
                                ckpt_every=MEMO_STEPS, log_every=20, keep=1, seed=0, device="cpu"), show_progress=False)
    return TaskAssets(root, corpus, shards, run, memo_run)


def task_file(assets: TaskAssets, task: str, split: str) -> Path:
    """A JSONL file of ``task`` (``similar-reg`` for the regression variant), made on first use:
    train 32, val 15, test 16 examples."""
    key = (task, split)
    if key not in assets.data:
        n, seed = {"train": (32, 1), "val": (15, 2), "test": (16, 3)}[split]
        if task == "similar-reg":
            rows = similar_examples(n, seed, regression=True)
        else:
            rows = MAKERS[task](n, seed)
        assets.data[key] = write_task_jsonl(assets.root / "data" / f"{task}-{split}.jsonl", rows)
    return assets.data[key]


def task_file_with(assets: TaskAssets, task: str, split: str, path: Path, index: int, **changes) -> Path:
    """``task_file`` written to ``path`` with its example ``index`` (0-based) changed by ``changes``."""
    rows = read_jsonl(task_file(assets, task, split))
    rows[index] = dict(rows[index], **changes)
    return write_task_jsonl(path, rows)


def finetuned(assets: TaskAssets, task: str) -> Path:
    """A fine-tuned run of ``task`` (``similar-reg``: similar with --regression), made on first use."""
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


# ---------------------------------------------------------------------------------------------
# Interoperability: English-like text, a BPE vocabulary learned from it in the OpenAI release's
# format, tiny models of ours and of transformers, and the release's weight layout.


def make_text(seed: int, n_sentences: int = 40) -> str:
    """Ordinary English-like text: words, names, commas, semicolons, colons, brackets, quotes,
    hyphenated pairs and . ! ? at sentence ends (nothing the two pre-tokenizers split differently)."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(ENGLISH_WORDS) for _ in range(rng.randint(3, 12))]
        words[-1] = rng.choice([w for w in ENGLISH_WORDS if len(w) > 1 and w.isalpha()])
        for i in range(len(words) - 1):
            roll = rng.random()
            if roll < 0.08:
                words[i] = rng.choice(NAMES)
            elif roll < 0.14:
                words[i] += ","
            elif roll < 0.17:
                words[i] += rng.choice([";", ":"])
            elif roll < 0.20 and words[i + 1].isalpha():
                words[i] = f"{words[i]}-{words[i + 1]}"
                words[i + 1] = rng.choice(ENGLISH_WORDS)
        if rng.random() < 0.2:
            i = rng.randrange(len(words))
            j = min(len(words), i + rng.randint(1, 3))
            words[i] = "(" + words[i]
            words[j - 1] += ")"
        elif rng.random() < 0.2:
            i = rng.randrange(len(words))
            words[i] = '"' + words[i]
            words[-1] += '"'
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "!", "?"])
        sentences.append(sentence)
    return " ".join(sentences)


def learn_bpe(texts: list[str], n_merges: int) -> tuple[list[str], list[tuple[str, str]]]:
    """A vocabulary (in id order) and merges learned the classic way: repeatedly merge the most
    frequent adjacent pair of symbols over the lower-cased words of ``texts``."""
    from gpt1cli.tokenizer.openai_bpe import NEWLINE_TOKEN, WORD_END, pre_tokenize

    counts = Counter(w.lower() for text in texts for w in pre_tokenize(text) if w != "\n")
    alphabet = sorted({ch for word in counts for ch in word})
    vocab = alphabet + [ch + WORD_END for ch in alphabet]
    seen = set(vocab)
    splits = {w: tuple(w[:-1]) + (w[-1] + WORD_END,) for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for word, count in counts.items():
            symbols = splits[word]
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        if joined not in seen:
            seen.add(joined)
            vocab.append(joined)
        for word, symbols in splits.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            splits[word] = tuple(out)
    vocab.append(NEWLINE_TOKEN)
    return vocab, merges


def write_release_tokenizer(folder: Path, vocab: list[str], merges: list[tuple[str, str]]) -> Path:
    """``encoder_bpe_40000.json`` and ``vocab_40000.bpe`` as the release lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder_bpe_40000.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "vocab_40000.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder


def tiny_config(vocab_size: int, arch: str = "gpt1", **overrides):
    from gpt1cli.config import ModelConfig

    settings = dict(n_ctx=24, n_layer=2, n_head=2, d_model=32, d_ff=128, dropout=0.0, attn_dropout=0.0, arch=arch)
    settings.update(overrides)
    return ModelConfig(vocab_size=vocab_size, **settings)


def random_gpt(config, seed: int = 0):
    """A model of ours with random weights; LayerNorm gains and biases are randomised too, so a
    swapped or untransposed tensor cannot hide behind an initial value of 0 or 1."""
    from gpt1cli.model.gpt import GPT

    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def write_release_weights(folder: Path, model, n_vocab: int, n_files: int = 10) -> Path:
    """The release's ``params_shapes.json`` + ``params_{i}.npy`` layout for the first ``n_vocab``
    token rows of ``model``: every array flattened, concatenated and split into ``n_files``."""
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    arrays = [state["pos_emb.weight"], state["tok_emb.weight"][:n_vocab]]
    for i in range(model.config.n_layer):
        p = f"blocks.{i}."
        for linear in ("attn.qkv", "attn.proj"):
            arrays += [state[p + linear + ".weight"].T[None], state[p + linear + ".bias"]]
        arrays += [state[p + "ln_1.weight"], state[p + "ln_1.bias"]]
        for linear in ("mlp.fc", "mlp.proj"):
            arrays += [state[p + linear + ".weight"].T[None], state[p + linear + ".bias"]]
        arrays += [state[p + "ln_2.weight"], state[p + "ln_2.bias"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params_shapes.json").write_text(json.dumps([list(a.shape) for a in arrays]), encoding="utf-8")
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32)
    for n, piece in enumerate(np.array_split(flat, n_files)):
        np.save(folder / f"params_{n}.npy", piece)
    return folder


def save_ours(run: Path, model, tokenizer_file: Path, *, head: torch.nn.Linear | None = None, task: dict | None = None) -> Path:
    """``model`` (plus a task head) as checkpoint step 1 of run ``run``."""
    from gpt1cli.checkpoint import save_checkpoint

    state = dict(model.state_dict())
    if head is not None:
        state.update({"head.weight": head.weight.detach(), "head.bias": head.bias.detach()})
    meta = {"kind": "finetune" if task else "pretrain", "task": task}
    return save_checkpoint(run, 1, model_state=state, config=model.config, tokenizer_path=tokenizer_file, meta=meta)


def mcq_task(n_choices: int = 3) -> dict:
    return {"name": "mcq", "labels": [], "regression": False, "n_outputs": 1, "n_choices": n_choices,
            "metric": "accuracy", "lm_coef": 0.5, "init": "pretrained"}


def randomize_hf(model, seed: int = 0):
    """Give a transformers model random biases and LayerNorm parameters (its init leaves them 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def hf_model(arch: str, vocab_size: int, *, double_heads: bool = False, seed: int = 0, **overrides):
    """A tiny random transformers OpenAI GPT (``gpt1``) or GPT-2 model with dropout off."""
    import transformers

    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, n_positions=24, n_embd=32, n_layer=2, n_head=2,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    settings.update(overrides)
    if arch == "gpt1":
        config = transformers.OpenAIGPTConfig(afn="gelu", **settings)
        cls = transformers.OpenAIGPTDoubleHeadsModel if double_heads else transformers.OpenAIGPTLMHeadModel
    else:
        config = transformers.GPT2Config(activation_function="gelu_new", n_inner=96, bos_token_id=0, eos_token_id=0, **settings)
        cls = transformers.GPT2DoubleHeadsModel if double_heads else transformers.GPT2LMHeadModel
    return randomize_hf(cls(config), seed)
