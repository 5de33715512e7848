"""Shared helpers for the language-model pipeline tests.

Everything here is made at run time: corpora come from a fixed word list and a seeded RNG.
Expensive artefacts (a tokenizer, shards and one short pre-training run) are built once per
test session by :func:`session_assets` and cached in this module, so every test module that
asks for them shares the same copy. Test modules wrap it in a session fixture::

    @pytest.fixture(scope="session")
    def assets(tmp_path_factory):
        return helpers.session_assets(tmp_path_factory)

Tests must treat the cached artefacts as read-only; copy them (``copy_shards``) to damage them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

# A small closed vocabulary keeps the corpus repetitive, so a tiny model learns it in a few steps.
WORDS = (
    "the a one every some cat dog bird fox horse child teacher farmer river garden house road "
    "village city forest hill window door table book letter song morning evening night winter "
    "summer sat ran walked sang read wrote saw found made kept quickly slowly quietly loudly "
    "happily under over near behind beside with without and but then because old young small "
    "large green blue red bright dark warm cold"
).split()

# Settings of the shared artefacts (kept tiny: 2 shared CPU cores).
VOCAB = 400
TOKENS_PER_SHARD = 1500
VAL_FRACTION = 0.1
N_DOCS = 160
RUN_STEPS = 24
RUN_BATCH = 4


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


# ---------------------------------------------------------------------------------------------
# CPU threads: the test machine has two shared cores; one intra-op thread avoids oversubscription.


@contextlib.contextmanager
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def single_thread_module():
    """Import into a test module to run its torch work on one thread (restored afterwards)."""
    with one_torch_thread():
        yield


# ---------------------------------------------------------------------------------------------
# Running the CLI


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_main(argv: list[str], capsys) -> CliResult:
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
    env = dict(os.environ)
    env.update({"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1", "PYTHONWARNINGS": "ignore",
                "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def run_subprocess(argv: list[str], *, cwd: Path | None = None, timeout: float = 120) -> CliResult:
    """Run ``python -m gpt1cli ARGV`` as a separate process."""
    proc = subprocess.run(
        [sys.executable, "-m", "gpt1cli", *[str(a) for a in argv]],
        cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_one_error_line(result: CliResult, *must_contain: str) -> str:
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


# ---------------------------------------------------------------------------------------------
# Reading outputs


def read_metrics(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def records(run_dir: Path, kind: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["kind"] == kind]


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


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# ---------------------------------------------------------------------------------------------
# Session artefacts


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


_CACHE: dict[str, Assets] = {}

RUN_ARGS = ["--preset", "tiny", "--n-ctx", "32", "--steps", str(RUN_STEPS), "--batch-size", str(RUN_BATCH), "--lr", "3e-3",
            "--eval-every", "8", "--eval-tokens", "512", "--log-every", "1", "--ckpt-every", "8", "--keep", "2",
            "--seed", "0", "--device", "cpu", "--quiet"]


def session_assets(tmp_path_factory) -> Assets:
    """Build (once per session) a corpus, its shards and a short pre-training run."""
    if "assets" in _CACHE:
        return _CACHE["assets"]
    with one_torch_thread():
        assets = _build_assets(tmp_path_factory.mktemp("pipeline-assets"))
    _CACHE["assets"] = assets
    return assets


def _build_assets(root: Path) -> Assets:
    from gpt1cli.cli.app import main

    docs = make_documents(N_DOCS, seed=1234)
    corpus = write_txt(root / "corpus" / "corpus.txt", docs)
    shards = root / "shards"
    main(["tokenize", str(corpus), "--out", str(shards), "--vocab-size", str(VOCAB),
          "--tokens-per-shard", str(TOKENS_PER_SHARD), "--val-fraction", str(VAL_FRACTION),
          "--seed", "0", "--threads", "1", "--quiet"])
    run = root / "run"
    main(["pretrain", "--shards", str(shards), "--out", str(run), *RUN_ARGS])
    return Assets(root, docs, corpus, shards, run, list(RUN_ARGS))
