"""Settings declared once: a config dataclass field holds a setting's default, help text and rule.

A field made by :func:`setting` carries, beside its default, the help text of its command-line
option, the option's names, the rule its values must pass and what ``--resume`` may do with it.
The rest follows from the fields: the command's options (:mod:`gpt1cli.cli.options`), the checks
of a config however it was built (:func:`check_settings`), the resume rules (:func:`names` by
policy) and the run config saved beside a checkpoint (:func:`saved`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable

from .errors import Gpt1Error

# What a resumed run does with a setting.
FIXED = "fixed"  # keeps the saved value; another value given is refused (it would not be the same run)
MAY_CHANGE = "may change"  # takes a value given anew; keeps the saved one when none is given
ANEW = "anew"  # belongs to the invocation, not the run: always the value given now
POLICIES = (FIXED, MAY_CHANGE, ANEW)

Rule = Callable[[Any, str], Any]
"""``rule(value, name)``: ``value`` when it is valid, else one :class:`Gpt1Error` naming ``name``."""

_KEY = "gpt1.setting"


@dataclass(frozen=True)
class Setting:
    """What a field declares besides its default (see :func:`setting`)."""

    help: str
    flags: tuple[str, ...] = ()
    rule: Rule | None = None
    show_default: bool | str = True
    fallback: Any = None
    on_resume: str = FIXED
    saved: bool = True
    option: bool = True
    argument: bool = False
    resume_fills: bool = False


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flags: tuple[str, ...] = (), rule: Rule | None = None,
            show_default: bool | str | None = None, fallback: Any = None, on_resume: str = FIXED, saved: bool = True,
            option: bool = True, argument: bool = False, resume_fills: bool = False) -> Any:
    """A dataclass field that is a setting.

    ``default``: the value when none is given (omitted: the setting must be given). ``help``:
    the option's help text. ``flags``: the option's names when they are not ``--the-field-name``
    (a bool without them is a ``--x/--no-x`` pair). ``rule``: what a value must pass, checked when
    the option is parsed and whenever a config is checked. ``fallback``: what a default of None
    stands for once the run is resolved (shown as the option's default). ``on_resume``: FIXED,
    MAY_CHANGE or ANEW. ``saved``: whether the run config written with a checkpoint records it.
    ``option``: whether the command line offers it. ``argument``: a positional argument, not an
    option. ``resume_fills``: required by the config, but optional on the command line because
    ``--resume`` takes it from the run.
    """
    if on_resume not in POLICIES:
        raise ValueError(f"on_resume must be one of {POLICIES}, not {on_resume!r}")
    if show_default is None:
        show_default = shown(fallback) if fallback is not None else True
    declared = Setting(help, tuple(flags), rule, show_default, fallback, on_resume, saved, option, argument, resume_fills)
    return dataclasses.field(default=default, metadata={_KEY: declared})


def shown(value) -> str:
    """A default as --help shows it (600.0 as 600)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def declared(field: dataclasses.Field) -> Setting | None:
    """The setting a field declares, or None for a field that is not one."""
    return field.metadata.get(_KEY)


def fields(config) -> list[dataclasses.Field]:
    """The setting fields of a config class (or instance), in declaration order."""
    return [f for f in dataclasses.fields(config) if declared(f) is not None]


def names(config, on_resume: str | None = None) -> tuple[str, ...]:
    """The settings of ``config``, or those with resume policy ``on_resume``."""
    return tuple(f.name for f in fields(config) if on_resume is None or declared(f).on_resume == on_resume)


def option_name(config, name: str) -> str:
    """How messages name setting ``name``: its long option (``--batch-size``), or the field name
    for a setting the command line does not offer."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    setting_ = declared(field)
    if setting_ is not None and not setting_.option:
        return name
    longs = [part for flag in (setting_.flags if setting_ else ()) for part in flag.split("/")[:1] if part.startswith("--")]
    return max(longs, key=len) if longs else "--" + name.replace("_", "-")


def default(field: dataclasses.Field) -> Any:
    """A field's default value (``dataclasses.MISSING`` when it must be given)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def fallbacks(config) -> dict[str, Any]:
    """What a None stands for, by setting, for the settings that have a fallback."""
    return {f.name: declared(f).fallback for f in fields(config) if declared(f).fallback is not None}


def check_settings(config) -> None:
    """Apply every setting's rule to ``config``; None passes only where it is the default."""
    for field in fields(config):
        value = getattr(config, field.name)
        if value is None:
            if field.default is None:
                continue
            raise Gpt1Error(f"{option_name(config, field.name)} must be given")
        rule = declared(field).rule
        if rule is not None:
            rule(value, option_name(config, field.name))


def saved(config) -> dict[str, Any]:
    """The run config recorded with a checkpoint: every setting declared ``saved`` (a command's
    ``--config`` reads it back, so a run can be repeated from it)."""
    return {f.name: getattr(config, f.name) for f in fields(config) if declared(f).saved}


def chosen(config) -> set[str]:
    """The settings whose value differs from the default (what a Python caller chose)."""
    return {f.name for f in fields(config) if default(f) is not dataclasses.MISSING and getattr(config, f.name) != default(f)}


def one_of(choices, what: str | None = None) -> Rule:
    """A rule for a value among ``choices``: "unknown WHAT 'x'; choose one of ..." with ``what``,
    else "--name must be a or b, not 'x'" ("one of a, b, c" for more)."""

    def rule(value, name):
        if value not in choices:
            if what is not None:
                raise Gpt1Error(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
            listed = " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"
            raise Gpt1Error(f"{name} must be {listed}, not {value!r}")
        return value

    return rule


def boolean(value, name):
    """Rule: true or false (a config from Python or a file may hold anything)."""
    if not isinstance(value, bool):
        raise Gpt1Error(f"{name} must be true or false, got {value!r}")
    return value


def path(value, name):
    """Rule: a path (str or os.PathLike)."""
    if not isinstance(value, (str, os.PathLike)):
        raise Gpt1Error(f"{name} must be a path, got {value!r}")
    return value
