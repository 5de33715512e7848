"""Collect every misfit of a conversion, then fail once with all of them on one line."""

from __future__ import annotations

from ..errors import Gpt1Error

_SHOWN = 6  # names listed per kind before "... (N in all)"


class Problems:
    """Misfits found while checking a conversion; :meth:`raise_if_any` reports them together."""

    def __init__(self, what: str):
        self.what = what
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(" ".join(str(message).split()))

    def add_names(self, label: str, names: list[str]) -> None:
        """One entry for a list of tensor names (missing, unexpected, ...), shortened when long."""
        if names:
            shown = ", ".join(names[:_SHOWN])
            more = f", ... ({len(names)} in all)" if len(names) > _SHOWN else ""
            self.add(f"{label}: {shown}{more}")

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raise one :class:`Gpt1Error` listing every problem; nothing has been written yet."""
        if self.items:
            count = len(self.items)
            listing = "; ".join(f"({i}) {item}" for i, item in enumerate(self.items, start=1))
            raise Gpt1Error(f"cannot convert {self.what}: {count} problem{'s' if count > 1 else ''}: {listing}; nothing was written")
