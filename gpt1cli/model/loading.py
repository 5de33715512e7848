"""Build a model and its tokenizer from a checkpoint, for every command that uses one."""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import Gpt1Error
from ..tokenizer import load_tokenizer
from .gpt import GPT


def model_from_checkpoint(path: str | Path, device: torch.device, *, strict: bool = True) -> tuple[GPT, Checkpoint]:
    """The checkpoint's decoder with its weights, on ``device``, in eval mode."""
    checkpoint = load_checkpoint(path)
    model = GPT(checkpoint.config)
    state = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise Gpt1Error(f"{checkpoint.path}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), checkpoint


def tokenizer_for(checkpoint: Checkpoint):
    """The checkpoint's own tokenizer (its hash was checked when the checkpoint was loaded)."""
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    if tokenizer.vocab_size > checkpoint.config.vocab_size:
        raise Gpt1Error(f"{checkpoint.tokenizer_path} has {tokenizer.vocab_size} tokens but the model in {checkpoint.path} "
                        f"only {checkpoint.config.vocab_size}: the checkpoint pairs a model with a tokenizer it was not "
                        "trained with")
    return tokenizer
