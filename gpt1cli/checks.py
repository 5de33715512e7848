"""Range checks for numbers a user or a file supplies: finite, the right sign, within bounds.

One function, :func:`check_number`, states the rule. :func:`number` and :func:`within` make
it a rule of a setting (``rule(value, name)``, see :mod:`gpt1cli.settings`); :func:`option`
turns a rule into a Typer callback so a bad option is refused at parse time with one error line
(exit 2), and library code (configs built from Python, resumed runs) applies the same rules.
"""

from __future__ import annotations

import math

from .errors import Gpt1Error


def check_number(value, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, below: float | None = None):
    """Return ``value`` if it is a finite number within the bounds; else raise :class:`Gpt1Error`.

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones. ``None``
    passes (an option left to its default).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Gpt1Error(f"{name} must be a number, not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise Gpt1Error(f"{name} must be a finite number, not {value}")
    if minimum is not None and value < minimum:
        raise Gpt1Error(f"{name} must be at least {minimum}, not {value}")
    if maximum is not None and value > maximum:
        raise Gpt1Error(f"{name} must be at most {maximum}, not {value}")
    if above is not None and value <= above:
        raise Gpt1Error(f"{name} must be greater than {above}, not {value}")
    if below is not None and value >= below:
        raise Gpt1Error(f"{name} must be less than {below}, not {value}")
    return value


def number(**bounds):
    """The rule "a finite number within ``bounds``" (:func:`check_number`'s words)."""

    def rule(value, name):
        return check_number(value, name, **bounds)

    return rule


def within(kind: type, wording: str, **bounds):
    """The rule "an integer (``kind`` int) or a number within ``bounds``", worded "NAME must be WORDING".

    An integer option refuses a float; a value above ``maximum`` says the maximum.
    """

    def rule(value, name):
        number_types = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            raise Gpt1Error(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        maximum = bounds.get("maximum")
        if maximum is not None and not (isinstance(value, float) and not math.isfinite(value)) and value > maximum:
            raise Gpt1Error(f"{name} must be at most {maximum}, got {value!r}")
        try:
            check_number(value, name, **bounds)
        except Gpt1Error:
            raise Gpt1Error(f"{name} must be {wording}, got {value!r}") from None
        return value

    return rule


def option(rule=None, **bounds):
    """A Typer callback applying ``rule`` (default: :func:`number` of ``bounds``) to an option:
    ``callback=option(minimum=0)``.

    It raises :class:`Gpt1Error` naming the option, so a bad value is the same one ``error:``
    line as every other bad input, before the command does anything. None (an option left
    unset) passes.
    """
    rule = rule or number(**bounds)

    def callback(ctx, param, value):
        if ctx.resilient_parsing or value is None:
            return value
        name = max(param.opts, key=len) if getattr(param, "opts", None) else param.name
        return rule(value, name)

    return callback


SEED = dict(minimum=0, maximum=2**63 - 1)
"""Seeds: numpy and torch accept only non-negative 64-bit ones."""
