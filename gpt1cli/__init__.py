"""gpt1: GPT-1 end to end, from a text corpus to fine-tuned task models."""

__version__ = "0.1.0"
