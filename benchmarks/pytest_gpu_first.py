"""A pytest plugin of the GPU check: run the ``gpu``-marked tests first.

The GPU check gives ``pytest tests/kernels -m "gpu or not gpu"`` a fixed share of its time;
the ``gpu`` tests (realistic sizes, bf16, autotuned configurations) are the ones only a GPU
machine runs, so they go first and a cut-off run has them. The order is otherwise kept.
Loaded with ``-p gpt1_benchmarks.pytest_gpu_first``.
"""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if item.get_closest_marker("gpu") is not None else 1)
