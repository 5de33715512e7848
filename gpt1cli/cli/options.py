"""A command's options built from its config dataclasses (see :mod:`gpt1cli.settings`).

``@command(Config)`` on a function taking ``options: Options`` gives Typer a signature with one
option per setting of ``Config`` (its default, help text, names and rule, checked as the command
line is parsed), between the function's own parameters before and after ``options``, and
``--config FILE``: the settings read from a file (:mod:`.config_file`), which the options typed
on the command line override. The function receives the values and which of them were given
(typed or in the file), and builds the config with :meth:`Options.config`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from .. import settings
from ..checks import option
from . import config_file

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


@dataclass
class Options:
    """What the command line gave: every setting's value (defaults included) and the names of
    those given on it (or in the environment, or in its --config file), not left to their default."""

    values: dict[str, Any]
    given: set[str]

    def config(self, config_class, **changes):
        """``config_class`` from the values and ``changes`` (paths as strings, as a saved config holds them)."""
        values = {**self.values, **changes}
        return config_class(**{name: _plain(values[name]) for name in settings.names(config_class) if name in values})


def _plain(value):
    return os.fspath(value) if isinstance(value, Path) else value


def was_given(ctx: typer.Context, name: str) -> bool:
    """Whether parameter ``name`` was set on the command line, in the environment or in the
    command's --config file (which fills the context's default map: a value there is given as
    much as a typed one, for the resume rules too)."""
    source = ctx.get_parameter_source(name)
    # Compared by name: Typer bundles its own copy of click, whose enum is not click's.
    return source is not None and source.name != "DEFAULT"


CONFIG_PARAMETER = "config_file"
CONFIG_HELP = ("Settings from a TOML, YAML or JSON file (keys: the options' names, as batch_size), overridden by "
               "the options given here; a run's metrics.jsonl repeats its settings. Paths in it are relative to "
               "the current directory.")


def config_option(known: dict[str, config_file.Known]):
    """The ``--config FILE`` option of a command whose settings are ``known``: read eagerly, its
    values become the defaults of the options not typed (the context's default map), checked as
    the options would check them."""

    def load(ctx: typer.Context, param, value):
        if value is None or ctx.resilient_parsing:
            return value
        ctx.default_map = {**(ctx.default_map or {}), **config_file.read_settings(value, known)}
        return value

    return typer.Option(None, "--config", help=CONFIG_HELP, show_default=False, is_eager=True,
                        callback=load)


def offered(*configs) -> list[tuple[type, dataclasses.Field]]:
    """The settings the command line offers over ``configs``, as ``(config, field)`` in --help's order.

    The settings a config introduces come before those it inherits (an override keeps its
    place), the first config to offer a name wins it, and the settings that must be given come
    first.
    """
    found: dict[str, tuple[type, dataclasses.Field]] = {}
    for config in configs:
        by_name = {f.name: f for f in settings.fields(config)}
        for klass in (c for c in config.__mro__ if dataclasses.is_dataclass(c)):
            inherited = {f.name for base in klass.__mro__[1:] if dataclasses.is_dataclass(base)
                         for f in dataclasses.fields(base)}
            for name in vars(klass).get("__annotations__", {}):
                field = by_name.get(name)
                if field is not None and name not in inherited and settings.declared(field).option and name not in found:
                    found[name] = (config, field)
    return sorted(found.values(), key=lambda item: item[1].default is not MISSING)


def parameters(*configs) -> list[inspect.Parameter]:
    """One Typer parameter per setting the command line offers over ``configs`` (see :func:`offered`)."""
    return [_parameter(field, settings.declared(field), typing.get_type_hints(config)[field.name])
            for config, field in offered(*configs)]


def _parameter(field, declared: settings.Setting, annotation) -> inspect.Parameter:
    if field.default is not MISSING:
        default = field.default
    else:
        default = None if declared.resume_fills else ...
    if declared.rule is settings.path:  # the config holds a str; the command line shows PATH
        annotation = Optional[Path] if default is None else Path
    return inspect.Parameter(field.name, _KEYWORD, default=_info(default, declared), annotation=annotation)


def _info(default, declared: settings.Setting):
    if declared.argument:
        return typer.Argument(default, help=declared.help, show_default=declared.show_default)
    callback = option(declared.rule) if declared.rule is not None else None
    return typer.Option(default, *declared.flags, help=declared.help, show_default=declared.show_default,
                        callback=callback)


def device_option():
    """The ``--device`` option of a command that is not built from a config (auto, cpu, cuda, cuda:N),
    checked as the command line is parsed."""
    from ..runtime import DEVICE_HELP, device_rule

    return typer.Option("auto", callback=option(device_rule), help=DEVICE_HELP)


def setting_option(config, name: str, *, default=MISSING, **changes):
    """The Typer option of ``config``'s setting ``name`` for a command that offers it in its own words:
    ``changes`` replace the help text or shown default, ``default`` the default. Its names and rule stay."""
    field = next(f for f in settings.fields(config) if f.name == name)
    declared = dataclasses.replace(settings.declared(field), **changes)
    return _info(field.default if default is MISSING else default, declared)


def command(*configs) -> Callable:
    """Make a function whose ``options: Options`` parameter stands for the settings of ``configs`` a Typer command."""

    def wrap(function: Callable) -> Callable:
        hints = typing.get_type_hints(function)
        own = list(inspect.signature(function).parameters.values())
        slot = next(i for i, p in enumerate(own) if hints.get(p.name) is Options)
        injected = own[slot].name
        context = next((p.name for p in own if hints.get(p.name) is typer.Context), None)
        added_context = context is None
        if added_context:
            context = "_typer_context"
            own.insert(0, inspect.Parameter(context, _KEYWORD, annotation=typer.Context))
            slot += 1
        own = [p.replace(kind=_KEYWORD, annotation=hints.get(p.name, p.annotation)) for p in own]
        settings_parameters = parameters(*configs)
        names = [p.name for p in settings_parameters]
        known = config_file.known_settings(offered(*configs), configs)
        config = inspect.Parameter(CONFIG_PARAMETER, _KEYWORD, default=config_option(known), annotation=Optional[Path])

        def run(**values):
            ctx = values.pop(context) if added_context else values[context]
            values.pop(CONFIG_PARAMETER)
            chosen = {name: values.pop(name) for name in names}
            given = {name for name in chosen if was_given(ctx, name)}
            return function(**values, **{injected: Options(chosen, given)})

        signature = [*own[:slot], config, *settings_parameters, *own[slot + 1:]]
        run.__signature__ = inspect.Signature(signature)
        run.__annotations__ = {p.name: p.annotation for p in signature}
        run.configs = configs  # where its settings are declared (tests compare the two)
        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(run, attribute, getattr(function, attribute))
        return run

    return wrap
