"""`gpt1 convert`: import and export weights (being written)."""

from ..errors import Gpt1Error


def convert() -> None:
    """Convert checkpoints from and to other formats."""
    raise Gpt1Error("gpt1 convert is not available yet")
