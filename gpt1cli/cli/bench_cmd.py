"""`gpt1 bench`: benchmarks (being written)."""

from ..errors import Gpt1Error


def bench() -> None:
    """Benchmark kernels, training, data and generation."""
    raise Gpt1Error("gpt1 bench is not available yet")
