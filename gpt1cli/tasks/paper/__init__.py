"""The paper's benchmarks as named tasks: readers of their published layouts, a registry of
their settings and figures, fine-tuning and evaluation by name, and suites laid out as the
paper's Tables 2, 3 and 4."""

from .named import evaluate_named, finetune_named
from .registry import SUITES, TASKS, PaperTask, find_folder, get_task, read_split
from .suite import render_tables, run_suite

__all__ = ["PaperTask", "SUITES", "TASKS", "evaluate_named", "find_folder", "finetune_named", "get_task", "read_split",
           "render_tables", "run_suite"]
