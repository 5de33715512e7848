"""Runs the benchmark sections and writes one results file per run.

The file is rewritten atomically after every section (``"complete": false`` until the last),
so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from gpt1cli.errors import Gpt1Error
from gpt1cli.fileio import atomic_write_json
from gpt1cli.runtime import fast_matmul, pick_device

from .env import default_results_path, environment
from .harness import Budget, Settings, error_text, parse_dtype, triton_mode

SCHEMA = "gpt1-bench"
SCHEMA_VERSION = 1
SECTIONS = ("kernels", "train", "data", "generate")
CHOICES = (*SECTIONS, "all")
# Shares of the time budget; time a section leaves unused passes on to the next ones.
SHARES = {"kernels": 0.4, "train": 0.4, "data": 0.05, "generate": 0.15}


def parse_sections(name: str) -> list[str]:
    if name == "all":
        return list(SECTIONS)
    if name not in SECTIONS:
        raise Gpt1Error(f"unknown benchmark {name!r}; choose one of {', '.join(CHOICES)}")
    return [name]


def _runner(section: str) -> Callable[[Settings], dict]:
    # Imported on demand: each section pulls in different parts of the toolkit.
    if section == "kernels":
        from .kernels import run_kernels

        return run_kernels
    if section == "train":
        from .train import run_train

        return run_train
    if section == "data":
        from .data import run_data

        return run_data
    from .generate import run_generate

    return run_generate


def resolve_out(out: str | Path | None, device: torch.device) -> Path:
    path = Path(out) if out is not None else default_results_path(device)
    if path.is_dir():
        raise Gpt1Error(f"--out {path} is a directory: give a file name such as {path / 'results.json'}")
    if path.suffix != ".json":
        raise Gpt1Error(f"--out {path} must end in .json")
    return path


def run_benchmarks(
    section: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    out: str | Path | None = None,
    quick: bool = False,
    max_minutes: float = 7.0,
    corpus_mb: float = 2000.0,
    command: dict | None = None,
    log: Callable[[str], None] = lambda message: None,
    on_section: Callable[[str, dict], None] | None = None,
) -> tuple[dict, Path]:
    """Run ``section`` (or ``all``) and write the results file; returns ``(results, path)``."""
    sections = parse_sections(section)
    if not max_minutes > 0:
        raise Gpt1Error(f"--max-minutes must be positive, got {max_minutes}")
    dev = pick_device(device)
    with fast_matmul(dev):  # TF32 as training uses it; the recorded env says so
        torch_dtype = parse_dtype(dtype, dev)
        path = resolve_out(out, dev)
        mode = triton_mode(dev)
        budget = Budget(max_minutes * 60.0)
        if not corpus_mb > 0:
            raise Gpt1Error(f"--corpus-mb must be positive, got {corpus_mb}")
        settings = Settings(device=dev, dtype=torch_dtype, quick=quick, triton_mode=mode, budget=budget, log=log,
                            corpus_mb=corpus_mb)
        results = {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "complete": False,
            "env": environment(dev, mode),
            "command": {
                "section": section, "sections": sections, "device": device, "dtype": dtype,
                "resolved_dtype": settings.dtype_name, "quick": quick, "max_minutes": max_minutes,
                "corpus_mb": corpus_mb,
                "out": str(path), **(command or {}),
            },
            "sections": {},
        }
        atomic_write_json(path, results)
        for index, name in enumerate(sections):
            remaining_shares = sum(SHARES[s] for s in sections[index:])
            settings.budget = budget.share(SHARES[name] / remaining_shares)
            started = time.perf_counter()
            try:
                section_result = _runner(name)(settings)
            except (KeyboardInterrupt, Gpt1Error):
                raise
            except Exception as exc:  # one broken section must not cost the others
                section_result = {"error": error_text(exc), "cases": []}
            section_result["seconds"] = round(time.perf_counter() - started, 3)
            results["sections"][name] = section_result
            atomic_write_json(path, results)
            if on_section is not None:
                on_section(name, section_result)
        results["complete"] = True
        atomic_write_json(path, results)
        return results, path
