"""Token-by-token decoding with a KV cache: greedy or sampled, through logit processors."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ...errors import Gpt1Error
from ..gpt import GPT, KVCache
from .processors import LogitProcessor, apply_processors, sampling_warpers, scoring_processors


def check_prompt(model: GPT, prompt: list[int]) -> None:
    """A prompt must be non-empty and leave room in the context for at least one new token."""
    n_ctx = model.config.n_ctx
    if not prompt:
        raise Gpt1Error("the prompt is empty: give some text to continue")
    if len(prompt) >= n_ctx:
        raise Gpt1Error(f"the prompt is {len(prompt)} tokens, the model's context is {n_ctx}: shorten the prompt")


@torch.no_grad()
def decode(
    model: GPT,
    prompt: list[int],
    *,
    max_new_tokens: int = 100,
    processors: Sequence[LogitProcessor] = (),
    warpers: Sequence[LogitProcessor] | None = None,
    stop_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> Iterator[tuple[int, float]]:
    """Yield ``(token, log-probability)`` for each new token: the one decoding loop.

    ``processors`` (:func:`~.processors.scoring_processors`) reshape the next-token distribution
    and the log-probability is under that distribution. ``warpers``
    (:func:`~.processors.sampling_warpers`) only shape the draw; ``None`` is greedy decoding.
    Generation ends after a token in ``stop_ids`` (yielded), after ``max_new_tokens``, or when the
    processors leave no token. Past the context length the cache is rebuilt from the most recent
    half-context, since learned positions cannot slide.
    """
    n_ctx = model.config.n_ctx
    check_prompt(model, prompt)
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
        logits = apply_processors(processors, model.logits(hidden[0, -1]).float(), history)
        if not torch.isfinite(logits).any():
            return  # the n-gram ban leaves no token
        logprobs = torch.log_softmax(logits, dim=-1)
        if warpers is None:
            token = int(logits.argmax(dim=-1))
        else:
            warped = apply_processors(warpers, logits.unsqueeze(0), history)
            token = int(torch.multinomial(torch.softmax(warped, dim=-1), 1, generator=generator))
        history.append(token)
        yield token, float(logprobs[token])
        if token in stop_ids:
            return
        pending = torch.tensor([[token]], device=device)


def generate_tokens(
    model: GPT,
    prompt: list[int],
    *,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    stop_ids: tuple[int, ...] = (),
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield new token ids one at a time (:func:`decode` with the processors these settings name).
    Temperature 0 is greedy."""
    check_prompt(model, prompt)
    warpers = sampling_warpers(temperature=temperature, top_k=top_k, top_p=top_p)
    processors = scoring_processors(repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
    for token, _ in decode(model, prompt, max_new_tokens=max_new_tokens, processors=processors, warpers=warpers,
                           stop_ids=stop_ids, generator=generator):
        yield token
