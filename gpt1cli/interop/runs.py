"""Write an imported model as a run directory of ours: everything or nothing.

The run is assembled under a temporary sibling of ``--out`` (through :func:`save_checkpoint`,
tokenizer attached) and renamed into place in one step, so a failure leaves no partial run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..checkpoint import save_checkpoint
from ..config import ModelConfig
from ..errors import Gpt1Error
from ..fileio import follow_umask
from .layout import our_shapes
from .problems import Problems

INIT_STD = 0.02  # the original code's N(0, 0.02) for the rows of new special tokens


@dataclass
class ImportSummary:
    """What an import produced, for the command's report."""

    checkpoint: Path
    config: ModelConfig
    rows_added: int
    task: str | None
    notes: list[str]


def check_empty_target(out: Path) -> None:
    """Refuse an ``--out`` that already holds something: conversions never merge into old files."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Gpt1Error(f"{out} already exists and is not empty: choose another --out")


def fit_embedding(emb: torch.Tensor, tokenizer, problems: Problems, *, seed: int, source: str,
                  init: str = "normal") -> tuple[torch.Tensor, int]:
    """The token embedding sized to ``tokenizer``: rows for missing special tokens are appended;
    fewer rows than the ordinary vocabulary, or more than the tokenizer has ids, is a problem.
    Returns the embedding and the number of rows added.

    ``init`` "normal": N(0, 0.02), seeded (the original fine-tuning code's rows). "mean": each new
    row is the mean of the existing rows (as transformers' ``resize_token_embeddings`` starts
    them): with the output layer tied to the embedding, a new token's logit is then the mean of
    the others', never the largest, so greedy generation is unchanged until fine-tuning moves it."""
    rows = emb.shape[0]
    base = int(getattr(tokenizer, "base_vocab_size", tokenizer.vocab_size))
    needed = int(tokenizer.vocab_size)
    if rows < base:
        problems.add(f"{source} has {rows:,} token rows but the tokenizer needs {base:,} for its vocabulary "
                     f"(+{needed - base} special): use the tokenizer the model was trained with")
        return emb, 0
    if rows > needed:
        problems.add(f"{source} has {rows:,} token rows but the tokenizer only {needed:,} ids: "
                     "use the tokenizer the model was trained with")
        return emb, 0
    added = needed - rows
    if added:
        if init == "mean":
            extra = emb.to(torch.float64).mean(dim=0, keepdim=True).to(torch.float32).expand(added, -1)
        else:
            generator = torch.Generator().manual_seed(seed)
            extra = torch.randn(added, emb.shape[1], generator=generator, dtype=torch.float32) * INIT_STD
        emb = torch.cat([emb.to(torch.float32), extra], dim=0).contiguous()
    return emb, added


def check_against_model(state: dict[str, torch.Tensor], config: ModelConfig, problems: Problems, *, head: bool) -> None:
    """Every tensor of our model for ``config`` is present with its shape, and nothing else."""
    expected = our_shapes(config)
    if head:
        expected.update({"head.weight": (1, config.d_model), "head.bias": (1,)})
    problems.add_names("missing after conversion", [n for n in expected if n not in state])
    problems.add_names("left over after conversion", [n for n in state if n not in expected])
    for name, shape in expected.items():
        if name in state and tuple(state[name].shape) != shape:
            problems.add(f"{name} converts to {tuple(state[name].shape)}, our model needs {shape}")


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` only if the block succeeds (else removed).

    The folder and every file in it get the modes the umask gives (``mkdtemp`` makes 0700, and
    some writers 0600 files) before the rename."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise Gpt1Error(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        yield staging
        for path in staging.rglob("*"):
            follow_umask(path)
        follow_umask(staging)
        os.replace(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise Gpt1Error(f"cannot write {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_run(out: str | Path, *, config: ModelConfig, state: dict[str, torch.Tensor], tokenizer, meta: dict) -> Path:
    """Write ``state`` + ``tokenizer`` as checkpoint step 0 of a new run ``out``; return the checkpoint folder."""
    out = Path(out)
    check_empty_target(out)
    with staged_directory(out) as staging:
        tokenizer_file = tokenizer.save(staging / ("source-tokenizer" + tokenizer.file_suffix))
        folder = save_checkpoint(staging, 0, model_state=state, config=config, tokenizer_path=tokenizer_file, meta=meta, keep=1)
        tokenizer_file.unlink()
    return out / folder.relative_to(staging)
