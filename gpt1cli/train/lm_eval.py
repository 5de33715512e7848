"""Language-model evaluation: loss, perplexity and bits per byte on held-out tokens or raw text."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..data.shards import TokenSplit, eval_windows
from ..errors import Gpt1Error
from ..model.loading import model_from_checkpoint
from ..progress import progress_bar
from ..runtime import autocast
from ..tokenizer import load_tokenizer


def _config(model):
    """The model config, also through a DDP wrapper."""
    return model.module.config if hasattr(model, "module") else model.config


def evaluate_lm(model, split: TokenSplit, *, device: torch.device, max_tokens: int | None = None, batch_size: int = 8,
                show_progress: bool = False) -> dict:
    """Mean next-token loss over non-overlapping windows of ``split``.

    Bits per byte divides by the split's UTF-8 bytes per token, so models with different
    tokenizers compare on the same footing. ``batch_size`` windows go through the model at a time
    (the figures do not depend on it beyond float rounding).
    """
    windows = eval_windows(split, _config(model).n_ctx, max_tokens)
    with progress_bar(f"evaluating the {split.name} split", len(windows), enabled=show_progress, count=True) as bar:
        totals = window_losses(model, (split.read(start, n) for start, n in windows), device=device,
                               batch_size=batch_size, progress=bar.advance)
    return lm_report(*totals, split.tokens_per_byte() if split.text_bytes else float("nan"))


def stream_windows(chunks: Iterable[np.ndarray], n_ctx: int) -> Iterator[np.ndarray]:
    """The windows of :func:`~gpt1cli.data.shards.eval_windows` (``n_ctx + 1`` tokens, each
    starting where the previous one's inputs end) cut from a stream of token chunks."""
    held = np.empty(0, dtype=np.int64)
    for chunk in chunks:
        held = np.concatenate([held, chunk])
        while len(held) >= n_ctx + 1:
            yield held[: n_ctx + 1]
            held = held[n_ctx:]
    if len(held) >= 2:
        yield held


@torch.no_grad()
def window_losses(model, windows: Iterable[np.ndarray], *, device: torch.device, batch_size: int = 8,
                  progress: Callable[[int], None] | None = None) -> tuple[float, int]:
    """Summed next-token loss and the number of predicted tokens over ``windows`` (token arrays);
    ``progress`` is called with the number of windows of each batch done."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise Gpt1Error(f"--batch-size must be a whole number >= 1, got {batch_size!r}")
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    windows = iter(windows)
    try:
        while group := list(itertools.islice(windows, batch_size)):
            length = max(len(w) for w in group)
            batch = torch.full((len(group), length), -100, dtype=torch.long)
            for row, window in enumerate(group):
                batch[row, : len(window)] = torch.from_numpy(np.asarray(window, dtype=np.int64))
            batch = batch.to(device)
            inputs = batch[:, :-1].clamp(min=0)
            targets = batch[:, 1:]
            with autocast(device):
                loss = model(inputs, targets=targets, reduction="sum")
            total_loss += float(loss)
            total_tokens += int((targets != -100).sum())
            if progress is not None:
                progress(len(group))
    finally:
        model.train(was_training)
    return total_loss, total_tokens


def lm_report(total_loss: float, total_tokens: int, tokens_per_byte: float) -> dict:
    """Loss, perplexity and bits per byte from summed losses."""
    mean = total_loss / max(total_tokens, 1)
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0)), "bpb": mean / math.log(2) * tokens_per_byte,
            "tokens": total_tokens}


def lm_shards_eval(ckpt: str | Path, shards: str | Path, device, *, max_tokens: int | None = None,
                   show_progress: bool = False, batch_size: int = 8) -> dict:
    """Loss, perplexity and bits per byte of a checkpoint on the validation split of a shard
    directory, which must have been tokenized with the checkpoint's tokenizer."""
    from ..data.shards import ShardDataset

    data = ShardDataset(shards)
    model, checkpoint = model_from_checkpoint(ckpt, device)
    if checkpoint.meta.get("tokenizer_blake2b") != data.tokenizer_hash:
        raise Gpt1Error(f"{shards} was made with a different tokenizer than {checkpoint.path}: re-tokenize with its "
                        f"{checkpoint.tokenizer_path.name}")
    return evaluate_lm(model, data.val, device=device, max_tokens=max_tokens, batch_size=batch_size,
                       show_progress=show_progress)


def lm_text_eval(ckpt: str | Path, text_file: str | Path, device, *, max_tokens: int | None = None,
                 show_progress: bool = False, batch_size: int = 8) -> dict:
    """Loss, perplexity and bits per byte of a checkpoint on a raw text corpus, streamed.

    The text is encoded as ``gpt1 tokenize`` encodes it and evaluated in the same
    non-overlapping windows as a shard split, chunk by chunk: memory does not grow with the
    file or with any one document. ``max_tokens`` stops after that many predicted tokens.
    """
    from ..data.corpus import expand_inputs
    from ..data.stream import iter_token_chunks

    model, checkpoint = model_from_checkpoint(ckpt, device)
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    paths = expand_inputs([str(text_file)])
    n_ctx = model.config.n_ctx
    seen = {"tokens": 0, "bytes": 0.0}
    with progress_bar(f"evaluating {text_file}", sum(path.stat().st_size for path in paths),
                      enabled=show_progress) as bar:
        def counted(chunks):
            for chunk in chunks:
                seen["tokens"] += len(chunk.tokens)
                seen["bytes"] += chunk.text_bytes
                yield chunk.tokens

        def moved(tokens: int, input_bytes: int) -> None:
            bar.update(completed=input_bytes)  # (a status would be a plain line of its own per chunk)

        chunks = iter_token_chunks(paths, tokenizer, max_tokens=None if max_tokens is None else max_tokens + 1,
                                   chunk_tokens=8 * n_ctx, progress=moved)
        total_loss, total_tokens = window_losses(model, stream_windows(counted(chunks), n_ctx), device=device,
                                                 batch_size=batch_size)
        if total_tokens < 1:  # raised inside the bar: no end line before the error
            raise Gpt1Error(f"{text_file} holds too little text to evaluate")
    return lm_report(total_loss, total_tokens, seen["tokens"] / seen["bytes"] if seen["bytes"] else math.nan)
