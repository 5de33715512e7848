"""Sampling from a trained model with a KV cache: greedy, temperature, top-k and top-p."""

from __future__ import annotations

from typing import Iterator

import torch

from ..errors import Gpt1Error
from .gpt import GPT, KVCache


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Mask logits outside the top-k and outside the smallest set whose probability reaches top-p."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens before it already reach top_p (the first always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate_tokens(
    model: GPT,
    prompt: list[int],
    *,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time. Temperature 0 is greedy.

    Past the context length the cache is rebuilt from the most recent half-context, since
    learned positions cannot slide.
    """
    n_ctx = model.config.n_ctx
    if not prompt:
        raise Gpt1Error("the prompt is empty: give some text to continue")
    if len(prompt) >= n_ctx:
        raise Gpt1Error(f"the prompt is {len(prompt)} tokens, the model's context is {n_ctx}: shorten the prompt")
    if temperature < 0:
        raise Gpt1Error(f"--temperature must be >= 0, got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    history = list(prompt)
    cache = KVCache(model.config.n_layer)
    pending = torch.tensor([history], device=device)
    for _ in range(max_new_tokens):
        if cache.length + pending.shape[1] > n_ctx:
            cache = KVCache(model.config.n_layer)
            pending = torch.tensor([history[-(n_ctx // 2):]], device=device)
        hidden = model(pending, cache=cache)
        logits = model.logits(hidden[:, -1]).float()
        if temperature == 0:
            token = int(logits.argmax(dim=-1))
        else:
            logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
            probs = torch.softmax(logits, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        history.append(token)
        yield token
        if token in stop_ids:
            return
        pending = torch.tensor([[token]], device=device)
