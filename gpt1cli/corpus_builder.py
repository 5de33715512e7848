"""The embedded default corpus: docstrings of the installed Python standard library.

Built at run time from text every machine with Python already has. Sources are parsed with
:mod:`ast`, never imported, so no module's side effects run.
"""

from __future__ import annotations

import ast
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


def build_stdlib_corpus(out_path: str | Path, max_bytes: int = 8_000_000) -> dict:
    """Write up to ``max_bytes`` of standard-library docstrings as JSONL documents; return counts."""
    documents, size = 0, 0
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for text in stdlib_documents():
            encoded = len(text.encode("utf-8"))
            if size + encoded > max_bytes:
                break
            handle.write(json.dumps({"text": text}) + "\n")
            documents += 1
            size += encoded
    return {"documents": documents, "bytes": size, "path": str(out_path)}
