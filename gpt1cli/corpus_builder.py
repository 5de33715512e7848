"""The embedded default corpus: docstrings of the installed Python standard library.

Built at run time from text every machine with Python already has. Sources are parsed with
:mod:`ast`, never imported, so no module's side effects run.
"""

from __future__ import annotations

import ast
import contextlib
import json
import sysconfig
from pathlib import Path
from typing import Iterator

from .fileio import atomic_path

MIN_CHARS = 80
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3", "turtledemo"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _docstrings(source: str) -> Iterator[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= MIN_CHARS:
                yield doc


def _pydoc_topics(root: Path) -> Iterator[str]:
    """The language reference topics that ``help()`` shows, stored as string literals."""
    path = root / "pydoc_data" / "topics.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for value in node.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    for section in value.value.split("\n\n\n"):
                        if len(section) >= MIN_CHARS:
                            yield section.strip()


def stdlib_documents(root: Path | None = None) -> Iterator[str]:
    """The reference topics, then every docstring of 80+ characters, in a fixed file order."""
    root = root or stdlib_root()
    yield from _pydoc_topics(root)
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        yield from _docstrings(source)


def build_stdlib_corpus(
    out_path: str | Path,
    max_bytes: int = 8_000_000,
    *,
    heldout_path: str | Path | None = None,
    heldout_per_10: int = 3,
) -> dict:
    """Write up to ``max_bytes`` of standard-library text as JSONL documents; return counts.

    With ``heldout_path``, ``heldout_per_10`` of every 10 documents go there instead, so a
    task can be built from text the model never saw in pre-training.
    """
    counts = {"documents": 0, "bytes": 0, "path": str(out_path)}
    if heldout_path is not None:
        counts.update(heldout_documents=0, heldout_bytes=0, heldout_path=str(heldout_path))
    with contextlib.ExitStack() as stack:
        main = open(stack.enter_context(atomic_path(out_path)), "w", encoding="utf-8")
        stack.callback(main.close)
        held = None
        if heldout_path is not None:
            held = open(stack.enter_context(atomic_path(heldout_path)), "w", encoding="utf-8")
            stack.callback(held.close)
        total = 0
        for index, text in enumerate(stdlib_documents()):
            encoded = len(text.encode("utf-8"))
            if total + encoded > max_bytes:
                break
            total += encoded
            line = json.dumps({"text": text}) + "\n"
            if held is not None and index % 10 < heldout_per_10:
                held.write(line)
                counts["heldout_documents"] += 1
                counts["heldout_bytes"] += encoded
            else:
                main.write(line)
                counts["documents"] += 1
                counts["bytes"] += encoded
    return counts
