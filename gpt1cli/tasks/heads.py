"""The fine-tuning model: the pretrained decoder plus one linear head W_y on the extract token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..model.gpt import GPT


@dataclass
class Batch:
    """Padded sequences of a batch of examples; ``per_example`` sequences belong to each example."""

    tokens: torch.Tensor  # (S, T) right-padded with the pad id
    lengths: torch.Tensor  # (S,)
    per_example: int  # 1 (classify, entail), 2 (similar), k (mcq)
    labels: torch.Tensor | None  # (N,) class indices or float targets

    def to(self, device) -> "Batch":
        labels = None if self.labels is None else self.labels.to(device)
        return Batch(self.tokens.to(device), self.lengths.to(device), self.per_example, labels)


def collate(sequences: list[list[list[int]]], labels: list | None, pad_id: int, regression: bool = False) -> Batch:
    """Flatten each example's sequences and right-pad them into one tensor."""
    flat = [seq for example in sequences for seq in example]
    length = max(len(s) for s in flat)
    tokens = torch.full((len(flat), length), pad_id, dtype=torch.long)
    for row, seq in enumerate(flat):
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in flat], dtype=torch.long)
    target = None
    if labels is not None:
        target = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    return Batch(tokens, lengths, len(sequences[0]), target)


class TaskModel(nn.Module):
    """GPT + dropout + linear head. Right padding needs no attention mask: causal attention
    never lets a real token see the pads after it."""

    def __init__(self, gpt: GPT, task: str, n_outputs: int, dropout: float = 0.1):
        super().__init__()
        self.gpt = gpt
        self.task = task
        self.dropout = nn.Dropout(dropout)
        # mcq scores each choice with one output; the softmax runs over the choices.
        self.head = nn.Linear(gpt.config.d_model, 1 if task == "mcq" else n_outputs)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: Batch, *, with_lm_loss: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(task logits (N, classes or choices), L1 on the sequences or None)``."""
        hidden = self.gpt(batch.tokens)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        extract = hidden[rows, batch.lengths - 1]  # the final state at the extract token
        if self.task == "similar":
            # Both orders run separately; their final states are added before the head.
            extract = extract.view(-1, 2, extract.shape[-1]).sum(dim=1)
        logits = self.head(self.dropout(extract))
        if self.task == "mcq":
            logits = logits.view(-1, batch.per_example)
        return logits, (self._lm_loss(batch, hidden) if with_lm_loss else None)

    def _lm_loss(self, batch: Batch, hidden: torch.Tensor) -> torch.Tensor:
        """L1 over the task sequences' own tokens (pads ignored)."""
        targets = batch.tokens[:, 1:].clone()
        positions = torch.arange(targets.shape[1], device=targets.device)
        targets[positions.unsqueeze(0) >= (batch.lengths - 1).unsqueeze(1)] = -100
        return self.gpt.lm_loss(hidden[:, :-1], targets)
