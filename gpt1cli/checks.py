"""Range checks for numbers a user or a file supplies: finite, the right sign, within bounds.

One function, :func:`check_number`, states the rule; :func:`option` turns it into a Typer
callback so a bad option is refused at parse time with one error line (exit 2), and library
code (configs built from Python, resumed runs) calls :func:`check_number` directly.
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


def option(*, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None):
    """A Typer callback applying :func:`check_number` to an option (``callback=option(minimum=0)``).

    It raises :class:`Gpt1Error` naming the option, so a bad number is the same one ``error:``
    line as every other bad input, before the command does anything.
    """

    def callback(ctx, param, value):
        if ctx.resilient_parsing:
            return value
        name = max(param.opts, key=len) if getattr(param, "opts", None) else param.name
        return check_number(value, name, minimum=minimum, maximum=maximum, above=above, below=below)

    return callback


SEED = dict(minimum=0, maximum=2**63 - 1)
"""Seeds: numpy and torch accept only non-negative 64-bit ones."""
