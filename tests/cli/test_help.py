"""`--help` lists every option with its default (the pipeline commands by hand, every command generically)."""

from __future__ import annotations

import re

import pytest
import typer

import support
from gpt1cli.cli.app import app

COMMANDS = ("tokenize", "pretrain", "generate", "demo")  # the language-model pipeline
ALL_COMMANDS = tuple(typer.main.get_command(app).commands)  # every registered command, for the generic check

# A few defaults written out by hand, so a silently changed default shows up here.
KNOWN_DEFAULTS = {
    "tokenize": {"--vocab-size": "8000", "--tokens-per-shard": "16777216", "--val-fraction": "0.005",
                 "--errors": "strict", "--seed": "0", "--threads": "0", "--max-train-sentences": "1000000",
                 "--overwrite": "no-overwrite"},
    "pretrain": {"--preset": "tiny", "--arch": "the preset's; tiny gpt1, gpt3-small gpt2", "--grad-accum": "1", "--weight-decay": "0.01",
                 "--grad-clip": "1.0", "--dropout": "0.1", "--seed": "0", "--eval-every": "100",
                 "--eval-tokens": "65536", "--ckpt-every": "500", "--keep": "3", "--log-every": "10",
                 "--max-bad-steps": "10", "--device": "auto"},
    "generate": {"--max-new-tokens": "100", "--temperature": "0.8", "--seed": "0", "--device": "auto"},
    "demo": {"--preset": "mini", "--device": "auto", "--out": "demo-out"},
}


def command(name):
    return typer.main.get_command(app).commands[name]


def help_rows(text: str) -> dict[str, str]:
    """Option row text by each of its names, from Rich's boxed help (one row per line at this width)."""
    rows = {}
    for line in support.strip_ansi(text).splitlines():
        line = line.strip()
        if not line.startswith("│"):
            continue
        cells = line.strip("│").strip().lstrip("*").strip()
        for token in cells.split():
            if not token.startswith("-"):
                break
            rows.setdefault(token, cells)
    return rows


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("TERMINAL_WIDTH", "300")
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.mark.parametrize("name", ALL_COMMANDS)
def test_help_lists_every_option_with_its_default(name, wide, capsys):
    result = support.run_main([name, "--help"], capsys)
    assert result.code == 0, result.err
    rows = help_rows(result.out)
    assert re.search(rf"Usage: \S+ {name} \[OPTIONS\]", result.out), result.out[:300]  # the usage line
    for param in command(name).params:
        if isinstance(param, typer.core.TyperArgument):
            assert param.name in result.out
            continue
        for opt in [*param.opts, *param.secondary_opts]:
            assert opt in rows, f"{name} --help does not list {opt}"
        row = rows[param.opts[0]]
        if param.secondary_opts:  # --x/--no-x flag pair
            expected = param.opts[0][2:] if param.default else param.secondary_opts[0][2:]
            assert f"[default: {expected}]" in row, row
        elif param.is_flag:
            assert "[default:" not in row or "[default: False]" in row
        elif param.default is not None and not param.required:
            assert f"[default: {param.default}]" in row, f"{name}: {row}"
        if param.required:
            assert "[required]" in row, row


@pytest.mark.parametrize("name", [n for n in COMMANDS if n in KNOWN_DEFAULTS])
def test_known_defaults_are_shown(name, wide, capsys):
    rows = help_rows(support.run_main([name, "--help"], capsys).out)
    for opt, default in KNOWN_DEFAULTS[name].items():
        # A default given as text (show_default="...") is rendered in parentheses.
        assert f"[default: {default}]" in rows[opt] or f"[default: ({default})]" in rows[opt], f"{name} {opt}: {rows[opt]}"


def described_defaults(name: str) -> dict[str, str]:
    """Options whose default depends on other settings, so their help text says it: ``[default: ...]``."""
    found = {}
    for param in command(name).params:
        match = re.search(r"\[(default: [^\]]+)\]", getattr(param, "help", None) or "")
        if match:
            found[param.opts[0]] = match.group(1)
    return found


@pytest.mark.parametrize("name", [n for n in ALL_COMMANDS if described_defaults(n)])
def test_defaults_described_in_the_help_text_are_shown(name, wide, capsys):
    """e.g. pretrain --steps says "[default: the preset's; tiny 200]": that must reach the screen."""
    rows = help_rows(support.run_main([name, "--help"], capsys).out)
    missing = {opt: rows[opt] for opt, text in described_defaults(name).items() if text not in rows[opt]}
    assert not missing, f"{name} --help drops the described defaults: {missing}"


def test_top_level_help_lists_the_pipeline_commands(wide, capsys):
    result = support.run_main(["--help"], capsys)
    assert result.code == 0
    for name in ALL_COMMANDS:
        assert re.search(rf"│ {name}\s+\S", support.strip_ansi(result.out)), f"{name} missing from gpt1 --help"
