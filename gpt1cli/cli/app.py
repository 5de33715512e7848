"""The ``gpt1`` command: a thin Typer front end over the library.

Each command lives in its own module and only parses options, calls library code and prints.
:data:`COMMANDS` registers them: ``gpt1 --help`` lists them with the first paragraph of each
function's docstring, read from the source without importing any module (they import torch), and
a command's module is imported only when that command runs, completes its options or shows its
own help. Bad input raises :class:`~gpt1cli.errors.Gpt1Error`,
printed here as one line with exit code 2.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Callable, NamedTuple

import typer
import typer.core
import typer.main
import typer.models
from rich.markup import escape

from .. import __version__
from ..errors import ExitCode, Gpt1Error, Interrupted, TrainingStopped
from ..progress import console as make_console


class Entry(NamedTuple):
    """A registered command: attribute ``function`` of module ``gpt1cli.cli.<module>``, a function
    (a command) or a ``typer.Typer`` (a group of subcommands, as ``gpt1 paper``)."""

    module: str
    function: str


# The commands, in --help's order. A new command: one row (and its module in gpt1cli/cli/).
COMMANDS: dict[str, Entry] = {
    "tokenize": Entry("tokenize_cmd", "tokenize"),
    "pretrain": Entry("pretrain_cmd", "pretrain"),
    "generate": Entry("generate_cmd", "generate"),
    "finetune": Entry("finetune_cmd", "finetune"),
    "eval": Entry("eval_cmd", "eval_"),
    "predict": Entry("predict_cmd", "predict"),
    "plot": Entry("plot_cmd", "plot"),
    "paper": Entry("paper_cmd", "app"),
    "make-task": Entry("make_task_cmd", "make_task"),
    "convert": Entry("convert_cmd", "convert"),
    "bench": Entry("bench_cmd", "bench"),
    "verify": Entry("verify_cmd", "verify"),
    "demo": Entry("demo_cmd", "demo"),
}


def function(name: str) -> Callable | typer.Typer:
    """The function (or sub-app) of command ``name`` (importing its module)."""
    entry = COMMANDS[name]
    return getattr(importlib.import_module(f"{__package__}.{entry.module}"), entry.function)


def summary(text: str | None) -> str:
    """The first paragraph of a help text, on one line (what ``gpt1 --help`` shows of a command)."""
    return " ".join(inspect.cleandoc(text or "").split("\n\n")[0].split())


def help_of(command: Callable | typer.Typer) -> str | None:
    """A command function's docstring, or a sub-app's help text."""
    return command.info.help if isinstance(command, typer.Typer) else command.__doc__


def listed_summary(name: str) -> str:
    """Command ``name``'s line in ``gpt1 --help``: the first paragraph of its function's docstring
    (or of its sub-app's ``help=``), read from the module's source without importing it (a module
    imports torch)."""
    entry = COMMANDS[name]
    source = Path(__file__).with_name(f"{entry.module}.py")
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        tree = ast.Module(body=[], type_ignores=[])
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry.function:
            return summary(ast.get_docstring(node))
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [entry.function]
                and isinstance(node.value, ast.Call)):
            text = next((k.value for k in node.value.keywords if k.arg == "help"), None)
            if isinstance(text, ast.Constant) and isinstance(text.value, str):
                return summary(text.value)
    return summary(help_of(function(name)))  # not plainly in the source: ask the command itself


def _plain_flags(params) -> list:
    """``params`` with the type column of every flag left empty: Typer's help would show
    ``--compile <bool>``, as if the flag took a value."""
    for param in params:
        if isinstance(param, typer.core.TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(typer.core.TyperCommand):
    """A gpt1 command: flags shown without a type, arguments in the usage line as ``INPUTS...``."""

    def get_params(self, ctx) -> list:
        return _plain_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, typer.core.TyperArgument):
                name = param.metavar or param.name.upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


class SubGroup(typer.core.TyperGroup):
    """A group of gpt1 subcommands (``gpt1 paper``): its own flags shown without a type."""

    def get_params(self, ctx) -> list:
        return _plain_flags(super().get_params(ctx))


def _conform(command):
    """``command`` (a sub-app's group and its commands too) as gpt1's own: Typer made them of its
    plain classes, which these subclasses extend with methods only."""
    if type(command) is typer.core.TyperCommand:
        command.__class__ = Command
    elif type(command) is typer.core.TyperGroup:
        command.__class__ = SubGroup
    for sub in getattr(command, "commands", {}).values():
        _conform(sub)
    return command


class _Commands(MutableMapping):
    """The group's commands by name: each made (its module imported) on first use."""

    def __init__(self, group: "Group"):
        self.group, self.made = group, {}

    def __getitem__(self, name: str):
        if name not in self.made:
            if name not in COMMANDS:
                raise KeyError(name)
            target = function(name)
            if isinstance(target, typer.Typer):  # a group of subcommands, as app.add_typer(target, name=name)
                command = typer.main.get_group_from_info(
                    typer.models.TyperInfo(target, name=name), pretty_exceptions_short=app.pretty_exceptions_short,
                    suggest_commands=self.group.suggest_commands, rich_markup_mode=self.group.rich_markup_mode)
            else:
                command = typer.main.get_command_from_info(
                    typer.models.CommandInfo(name=name, callback=target, cls=Command),
                    pretty_exceptions_short=app.pretty_exceptions_short, rich_markup_mode=self.group.rich_markup_mode)
            self.made[name] = _conform(command)
        return self.made[name]

    def __setitem__(self, name: str, command) -> None:
        self.made[name] = command

    def __delitem__(self, name: str) -> None:
        del self.made[name]

    def __iter__(self):
        return iter(dict.fromkeys([*COMMANDS, *self.made]))

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self.made))


class Group(typer.core.TyperGroup):
    """``gpt1``: lists and completes its commands from :data:`COMMANDS`; imports one only to run it
    (or show its help, or complete its options)."""

    def __init__(self, **attrs):
        super().__init__(**attrs)
        self.commands = _Commands(self)
        self._listing = False

    def list_commands(self, ctx) -> list[str]:
        return list(self.commands)

    def get_command(self, ctx, name: str):
        if self._listing and name in COMMANDS and name not in self.commands.made:
            return typer.core.TyperCommand(name=name, help=listed_summary(name))  # its line in the list
        return self.commands.get(name)

    def get_params(self, ctx) -> list:
        return _plain_flags(super().get_params(ctx))

    def _summaries(self, method, *args):
        self._listing = True
        try:
            return method(*args)
        finally:
            self._listing = False

    def format_help(self, ctx, formatter) -> None:
        return self._summaries(super().format_help, ctx, formatter)

    def shell_complete(self, ctx, incomplete: str) -> list:
        return self._summaries(super().shell_complete, ctx, incomplete)


def _show_version(ctx: typer.Context, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    typer.echo(f"gpt1 {__version__} ({', '.join(_versions())})")
    raise typer.Exit()


def _versions() -> list[str]:
    """torch's, triton's and Python's versions, from the installed packages' metadata (torch is not imported)."""
    from importlib import metadata

    found = []
    for package in ("torch", "triton"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return [*found, f"Python {sys.version.split()[0]}"]


app = typer.Typer(
    name="gpt1",
    cls=Group,
    help="GPT-1 end to end: tokenize a corpus, pre-train, fine-tune, evaluate, generate, benchmark.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _gpt1(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Show the version (and torch's, triton's and Python's) and exit."),
) -> None:
    """The options of ``gpt1`` itself (its help text is the app's)."""


_err = make_console(stderr=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m gpt1cli``."""
    try:
        code = app(args=argv, prog_name="gpt1", standalone_mode=False)
    except Gpt1Error as exc:
        _err.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(ExitCode.BAD_INPUT)
    except TrainingStopped as exc:
        _err.print(escape(str(exc)), style="yellow", soft_wrap=True)
        sys.exit(ExitCode.STOPPED)
    except Interrupted as exc:
        _err.print(escape(str(exc)), style="yellow", soft_wrap=True)
        sys.exit(ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        _err.print("interrupted", style="yellow")
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:
        # Usage errors (Typer carries its own copy of click's exception classes): click's own message.
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(ExitCode.INTERRUPTED)
        raise
    # Without standalone mode Typer *returns* the exit code of a KeyboardInterrupt (130) or of
    # typer.Exit: it must reach the shell, never be dropped as success.
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == ExitCode.INTERRUPTED:
            _err.print("interrupted", style="yellow")
        sys.exit(code)
