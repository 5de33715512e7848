"""The ``gpt1`` command: a thin Typer front end over the library.

Each command lives in its own module and only parses options, calls library code and prints.
Bad input raises :class:`~gpt1cli.errors.Gpt1Error`, printed here as one line with exit code 2.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import ExitCode, Gpt1Error, Interrupted, TrainingStopped
from . import (
    bench_cmd,
    convert_cmd,
    demo_cmd,
    eval_cmd,
    finetune_cmd,
    generate_cmd,
    make_task_cmd,
    predict_cmd,
    pretrain_cmd,
    tokenize_cmd,
    verify_cmd,
)

app = typer.Typer(
    name="gpt1",
    help="GPT-1 end to end: tokenize a corpus, pre-train, fine-tune, evaluate, generate, benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("tokenize")(tokenize_cmd.tokenize)
app.command("pretrain")(pretrain_cmd.pretrain)
app.command("generate")(generate_cmd.generate)
app.command("finetune")(finetune_cmd.finetune)
app.command("eval")(eval_cmd.eval_)
app.command("predict")(predict_cmd.predict)
app.command("make-task")(make_task_cmd.make_task)
app.command("convert")(convert_cmd.convert)
app.command("bench")(bench_cmd.bench)
app.command("verify")(verify_cmd.verify)
app.command("demo")(demo_cmd.demo)

_err = Console(stderr=True, highlight=False)


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
