"""Running a task head: examples encoded and batched for it, its outputs as predictions, and a
fine-tuned head loaded from its checkpoint (shared by fine-tuning, evaluation and prediction)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import Checkpoint, load_checkpoint
from ..errors import Gpt1Error
from ..model.gpt import GPT
from ..runtime import autocast
from .data import Example, label_key, label_text
from .heads import TaskModel, collate
from .transforms import Specials, transform


def specials_of(tokenizer) -> Specials:
    return Specials(start=tokenizer.start_id, delim=tokenizer.delim_id, extract=tokenizer.extract_id)


def encode_examples(examples: list[Example], task: str, tokenizer, n_ctx: int) -> list[list[list[int]]]:
    specials = specials_of(tokenizer)
    return [transform(e, task, tokenizer.encode, specials, n_ctx) for e in examples]


def label_indices(examples: list[Example], labels: list, regression: bool) -> list:
    """Class indices in the checkpoint's label set (or float targets)."""
    if regression:
        return [float(e.label) for e in examples]
    index = {label_key(label): i for i, label in enumerate(labels)}
    # CSV gives "1" as the number 1 (and true as "true"), JSONL keeps the type: the same label either way.
    by_text = {label_text(label): i for i, label in enumerate(labels)}
    out = []
    for example in examples:
        if label_key(example.label) in index:
            out.append(index[label_key(example.label)])
        elif label_text(example.label) in by_text:
            out.append(by_text[label_text(example.label)])
        else:
            raise Gpt1Error(f"{example.where}: label {example.label!r} was not seen in training (labels: {labels})")
    return out


def batches(encoded, targets, pad_id: int, batch_size: int, regression: bool, order=None):
    order = range(len(encoded)) if order is None else order
    order = list(order)
    for i in range(0, len(order), batch_size):
        ids = order[i : i + batch_size]
        labels = None if targets is None else [targets[j] for j in ids]
        yield ids, collate([encoded[j] for j in ids], labels, pad_id, regression)


@torch.no_grad()
def infer(model: TaskModel, encoded, pad_id: int, device, batch_size: int = 32, regression: bool = False,
          progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Task logits (or regression outputs) for every example, in order; ``progress`` is called with
    the number of examples of each batch done. Right padding and causal attention make every
    example's outputs independent of the batch it is in."""
    check_batch_size(batch_size)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for ids, batch in batches(encoded, None, pad_id, batch_size, regression):
            with autocast(device):
                logits, _ = model(batch.to(device))
            outputs.append(logits.float().cpu())
            if progress is not None:
                progress(len(ids))
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def check_batch_size(batch_size) -> int:
    """Examples (or sequences) per forward pass: a whole number >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise Gpt1Error(f"--batch-size must be a whole number >= 1, got {batch_size!r}")
    return batch_size


def task_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A task model's weights in the checkpoint layout: decoder names as in pre-training, plus ``head.*``."""
    state = {}
    for name, tensor in model_state.items():
        state[name[len("gpt."):] if name.startswith("gpt.") else name] = tensor
    return state


def module_state(checkpoint_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`task_state`: checkpoint names -> :class:`TaskModel` names."""
    return {("gpt." + k if not k.startswith("head.") else k): v for k, v in checkpoint_state.items()}


def load_task_model(path: str | Path, device, task: str | None = None) -> tuple[TaskModel, Checkpoint]:
    """A fine-tuned checkpoint as a :class:`TaskModel` in eval mode."""
    checkpoint = load_checkpoint(path)
    info = checkpoint.task
    if not info:
        raise Gpt1Error(f"{checkpoint.path} is a pre-trained checkpoint without a task head: fine-tune it with `gpt1 finetune`")
    if info.get("name") == "generate":
        raise Gpt1Error(f"{checkpoint.path} is a generate-task checkpoint (no head): use `gpt1 generate --ckpt RUN "
                        "--input FILE --out FILE` or `gpt1 eval --task generate`")
    if task is not None and info["name"] != task:
        raise Gpt1Error(f"{checkpoint.path} was fine-tuned for the {info['name']} task, not {task}")
    gpt = GPT(checkpoint.config)
    model = TaskModel(gpt, info["name"], int(info["n_outputs"]))
    missing, unexpected = model.load_state_dict(module_state(checkpoint.state_dict), strict=False)
    if missing or unexpected:
        raise Gpt1Error(f"{checkpoint.path}: weights do not fit the task model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), checkpoint


def predictions(logits: torch.Tensor, regression: bool) -> tuple[list, torch.Tensor | None]:
    if regression:
        return logits.view(-1).tolist(), None
    probs = torch.softmax(logits, dim=-1)
    return probs.argmax(dim=-1).tolist(), probs
