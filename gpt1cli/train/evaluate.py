"""Language-model evaluation: loss, perplexity and bits per byte on held-out tokens."""

from __future__ import annotations

import math

import torch

from ..data.shards import TokenSplit, eval_windows
from ..runtime import autocast


def _config(model):
    """The model config, also through a DDP wrapper."""
    return model.module.config if hasattr(model, "module") else model.config


@torch.no_grad()
def evaluate_lm(model, split: TokenSplit, *, device: torch.device, max_tokens: int | None = None, batch_size: int = 8) -> dict:
    """Mean next-token loss over non-overlapping windows of ``split``.

    Bits per byte divides by the split's UTF-8 bytes per token, so models with different
    tokenizers compare on the same footing.
    """
    was_training = model.training
    model.eval()
    n_ctx = _config(model).n_ctx
    windows = eval_windows(split, n_ctx, max_tokens)
    total_loss, total_tokens = 0.0, 0
    try:
        for i in range(0, len(windows), batch_size):
            group = windows[i : i + batch_size]
            length = max(n for _, n in group)
            batch = torch.full((len(group), length), -100, dtype=torch.long)
            for row, (start, n) in enumerate(group):
                batch[row, :n] = torch.from_numpy(split.read(start, n))
            batch = batch.to(device)
            inputs = batch[:, :-1].clamp(min=0)
            targets = batch[:, 1:]
            with autocast(device):
                loss = model(inputs, targets=targets, reduction="sum")
            total_loss += float(loss)
            total_tokens += int((targets != -100).sum())
    finally:
        model.train(was_training)
    mean = total_loss / max(total_tokens, 1)
    bpb = mean / math.log(2) * split.tokens_per_byte() if split.text_bytes else float("nan")
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0)), "bpb": bpb, "tokens": total_tokens}
