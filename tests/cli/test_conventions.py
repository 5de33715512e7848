"""The command line's conventions: a fast `gpt1 --help` that imports no command (nor torch),
--version, shell completion, flags shown as flags, usage lines in plain words, choices listed in full."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import support
from gpt1cli import __version__
from gpt1cli.cli.app import COMMANDS, app, function, help_of, listed_summary, summary

# What `gpt1 --help` must not import: the command modules and the heavy libraries they use.
HEAVY = ("torch", "triton", "numpy", "pyarrow", "sentencepiece", "gpt1_benchmarks", "gpt1_kernels")


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("TERMINAL_WIDTH", "300")
    monkeypatch.setenv("NO_COLOR", "1")


def run_python(code: str, *, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=support.REPO, env=env or support.cli_env())


def imported_by(argv: list[str]) -> tuple[str, list[str]]:
    """``gpt1 ARGV``'s standard output in a fresh interpreter, and the modules it had imported by the end."""
    code = ("import sys\nfrom gpt1cli.cli.app import main\ntry:\n    main(%r)\nfinally:\n"
            "    print('\\nMODULES ' + ' '.join(sorted(sys.modules)))" % (argv,))
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    out, _, modules = done.stdout.rpartition("\nMODULES ")
    return out, modules.split()


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY or re.fullmatch(r"gpt1cli\.cli\.\w+_cmd", m)]


# ---------------------------------------------------------------------------------------------
# gpt1 --help and --version: no command module, no torch


def test_top_level_help_lists_every_command_without_importing_one():
    out, modules = imported_by(["--help"])
    assert heavy(modules) == [], "gpt1 --help imported what only a command needs"
    text = support.strip_ansi(out)
    for name in COMMANDS:
        assert re.search(rf"│ {re.escape(name)}\s+{re.escape(listed_summary(name).split()[0])}", text), f"{name} not listed"


def test_top_level_help_is_quick():
    """Python's start-up and the Typer/Rich imports, nothing more (it took 2.9 s while torch was imported)."""
    env = support.cli_env(PYTHONDONTWRITEBYTECODE="1")
    best = min(_timed([sys.executable, "-m", "gpt1cli", "--help"], env) for _ in range(3))
    assert best < 1.5, f"gpt1 --help took {best:.2f} s"  # about 0.4 s on the test machine; slack for its load


def _timed(argv, env) -> float:
    import time

    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=support.REPO, env=env)
    assert done.returncode == 0, done.stderr
    return time.perf_counter() - start


def test_a_command_is_imported_to_show_its_own_help():
    out, modules = imported_by(["verify", "--help"])
    assert "gpt1cli.cli.verify_cmd" in modules and "gpt1cli.cli.pretrain_cmd" not in modules
    assert "Usage: gpt1 verify [OPTIONS] PATHS..." in support.strip_ansi(out)


def test_each_listed_summary_is_the_first_paragraph_of_its_command_docstring():
    """Read from the source for --help; the same text as the imported command's help."""
    for name in COMMANDS:
        assert listed_summary(name) == summary(help_of(function(name))), name
        assert len(listed_summary(name).split()) >= 5, name


def test_version_names_the_package_and_its_libraries_without_importing_torch():
    out, modules = imported_by(["--version"])
    assert heavy(modules) == []
    from importlib import metadata

    line = out.strip()
    assert line.startswith(f"gpt1 {__version__} (torch {metadata.version('torch')}, "), line
    assert line.endswith(f"Python {sys.version.split()[0]})"), line
    assert len(out.strip().splitlines()) == 1


def test_version_exits_zero_through_main(capsys):
    result = support.run_main(["--version"], capsys)
    assert result.code == 0 and result.out.startswith(f"gpt1 {__version__} ")


# ---------------------------------------------------------------------------------------------
# Shell completion


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o default -F _gpt1_completion gpt1"),
                                           ("zsh", "#compdef gpt1"), ("fish", "complete --command gpt1")])
def test_show_completion_prints_the_script_for_gpt1(shell, marker):
    env = support.cli_env(_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION="1")
    done = subprocess.run(support.cli_command("--show-completion", shell), capture_output=True, text=True,
                          timeout=120, cwd=support.REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout and "_GPT1_COMPLETE" in done.stdout, done.stdout


def complete_bash(words: str) -> list[str]:
    env = support.cli_env(_GPT1_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - 1))
    done = subprocess.run(support.cli_command(), capture_output=True, text=True, timeout=120, cwd=support.REPO, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_completion_of_command_names_and_of_a_command_options():
    assert complete_bash("gpt1 pre") == ["pretrain", "predict"]
    assert complete_bash("gpt1 pretrain --res") == ["--resume"]
    assert "--config" in complete_bash("gpt1 finetune --con")


def test_install_and_show_completion_are_offered(wide, capsys):
    result = support.run_main(["--help"], capsys)
    assert "--install-completion" in result.out and "--show-completion" in result.out and "--version" in result.out


# ---------------------------------------------------------------------------------------------
# --help: flags without a type, usage lines without placeholders


def every_command_line() -> list[list[str]]:
    """``[name]`` of every command, and ``[group, name]`` of every subcommand of a group (gpt1 paper)."""
    found = []
    for name in COMMANDS:
        found.append([name])
        found += [[name, sub] for sub in getattr(click_command(name), "commands", {})]
    return found


def click_command(name: str):
    import typer

    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("words", every_command_line(), ids=" ".join)
def test_flags_show_no_value_type_and_usage_names_the_arguments(words, wide, capsys):
    result = support.run_main([*words, "--help"], capsys)
    assert result.code == 0, result.err
    text = support.strip_ansi(result.out)
    assert "<bool>" not in text and "BOOLEAN" not in text, f"{words} --help shows a flag as taking a value"
    usage = next(line for line in text.splitlines() if "Usage:" in line).strip()
    group = len(words) == 1 and hasattr(click_command(words[0]), "commands")
    pieces = r" COMMAND \[ARGS\]\.\.\." if group else r"( \[?[A-Z_]+\]?(\.\.\.)?)*"
    assert re.fullmatch(rf"Usage: gpt1 {' '.join(words)} \[OPTIONS\]{pieces}", usage), usage


USAGE = {"tokenize": "Usage: gpt1 tokenize [OPTIONS] INPUTS...", "make-task": "Usage: gpt1 make-task [OPTIONS] KIND INPUTS...",
         "bench": "Usage: gpt1 bench [OPTIONS] SECTION", "verify": "Usage: gpt1 verify [OPTIONS] PATHS...",
         "pretrain": "Usage: gpt1 pretrain [OPTIONS]"}


@pytest.mark.parametrize("name", list(USAGE))
def test_usage_lines(name, wide, capsys):
    assert USAGE[name] in support.strip_ansi(support.run_main([name, "--help"], capsys).out)


def test_a_bool_setting_reads_as_a_flag(wide, capsys):
    lines = support.strip_ansi(support.run_main(["pretrain", "--help"], capsys).out).splitlines()
    rows = {line.strip("│ *").split()[0]: line for line in lines if line.strip("│ *").startswith("--")}
    assert re.search(r"--compile\s+torch\.compile the model\.", rows["--compile"]), rows["--compile"]
    assert re.search(r"--resume\s+Continue the run", rows["--resume"]), rows["--resume"]
    assert re.search(r"--shards\s+<path>\s+Shard directory", rows["--shards"]), rows["--shards"]  # a value keeps its type


def test_a_usage_error_shows_the_plain_usage_line(capsys):
    result = support.run_main(["tokenize"], capsys)
    assert result.code == 2 and "Usage: gpt1 tokenize [OPTIONS] INPUTS..." in result.err
    assert "Missing argument 'inputs'" in result.err


# ---------------------------------------------------------------------------------------------
# Errors that list choices list all of them


def test_finetune_unknown_task_lists_every_task_kind(tmp_path, capsys):
    result = support.run_main(["finetune", "--task", "bogus", "--train", tmp_path / "t.jsonl", "--val", tmp_path / "v.jsonl",
                               "--from", tmp_path / "run", "--out", tmp_path / "out"], capsys)
    support.assert_one_error_line(result, "'bogus'", "classify, entail, similar, mcq", "generate")


def test_pretrain_unknown_preset_lists_every_preset(tmp_path, capsys):
    from gpt1cli.config import PRESETS

    result = support.run_main(["pretrain", "--shards", tmp_path, "--out", tmp_path / "out", "--preset", "bogus"], capsys)
    support.assert_one_error_line(result, "unknown preset 'bogus'", ", ".join(PRESETS))


def test_every_registered_command_is_its_module_attribute():
    for name, entry in COMMANDS.items():
        assert function(name) is getattr(sys.modules[f"gpt1cli.cli.{entry.module}"], entry.function), name
