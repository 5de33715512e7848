"""Logit processors: small functions of ``(logits, history) -> logits`` that decoding composes.

Two kinds, applied in this order:

* **scoring** processors change the distribution a token is scored under (what greedy decoding
  takes the argmax of, and beam search sums): :class:`RepetitionPenalty`, :class:`NoRepeatNGram`.
  They work on one ``(V,)`` row and read ``history``, everything the model has read so far.
* **sampling** warpers only shape the draw and leave the reported log-probability alone:
  :class:`Temperature`, :class:`TopK`, :class:`TopP`. They work on ``(..., V)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from ...checks import check_number


class LogitProcessor(Protocol):
    def __call__(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor: ...


def apply_processors(processors: Sequence[LogitProcessor], logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
    """``logits`` through each processor in turn."""
    for processor in processors:
        logits = processor(logits, history)
    return logits


# ---------------------------------------------------------------------------------------------
# Scoring processors


def apply_repetition_penalty(logits: torch.Tensor, history: Sequence[int], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019) on ``(V,)`` logits: every token already in
    ``history`` has a positive logit divided by ``penalty`` and a negative one multiplied by it."""
    if penalty == 1.0 or not history:
        return logits
    seen = torch.tensor(sorted(set(history)), device=logits.device)
    values = logits.index_select(-1, seen)
    values = torch.where(values > 0, values / penalty, values * penalty)
    return logits.index_copy(-1, seen, values)


def banned_ngram_tokens(history: Sequence[int], n: int) -> set[int]:
    """Tokens that would complete an ``n``-gram already present in ``history``."""
    if n <= 0 or len(history) < n:
        return set()
    if n == 1:
        return set(history)
    prefix = tuple(history[len(history) - n + 1:])
    banned = set()
    for i in range(len(history) - n + 1):
        if tuple(history[i : i + n - 1]) == prefix:
            banned.add(history[i + n - 1])
    return banned


@dataclass(frozen=True)
class RepetitionPenalty:
    """:func:`apply_repetition_penalty` as a processor."""

    penalty: float

    def __call__(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        return apply_repetition_penalty(logits, history, self.penalty)


@dataclass(frozen=True)
class NoRepeatNGram:
    """Banned tokens (those that would repeat an n-gram of ``history``) get ``-inf``."""

    size: int

    def __call__(self, logits: torch.Tensor, history: Sequence[int]) -> torch.Tensor:
        banned = banned_ngram_tokens(history, self.size)
        if not banned:
            return logits
        return logits.index_fill(-1, torch.tensor(sorted(banned), device=logits.device), float("-inf"))


def scoring_processors(*, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> list[LogitProcessor]:
    """The repetition penalty, then the n-gram ban; the ones that are off are left out."""
    processors: list[LogitProcessor] = []
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenalty(repetition_penalty))
    if no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGram(no_repeat_ngram_size))
    return processors


# ---------------------------------------------------------------------------------------------
# Sampling warpers


@dataclass(frozen=True)
class Temperature:
    value: float

    def __call__(self, logits: torch.Tensor, history: Sequence[int] = ()) -> torch.Tensor:
        return logits / self.value


@dataclass(frozen=True)
class TopK:
    """Mask every logit below the ``k``-th largest (no-op unless ``0 < k < V``)."""

    k: int

    def __call__(self, logits: torch.Tensor, history: Sequence[int] = ()) -> torch.Tensor:
        if not 0 < self.k < logits.shape[-1]:
            return logits
        kth = torch.topk(logits, self.k, dim=-1).values[..., -1:]
        return logits.masked_fill(logits < kth, float("-inf"))


@dataclass(frozen=True)
class TopP:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches ``p``
    (no-op unless ``0 < p < 1``)."""

    p: float

    def __call__(self, logits: torch.Tensor, history: Sequence[int] = ()) -> torch.Tensor:
        if not 0.0 < self.p < 1.0:
            return logits
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens before it already reach p (the first always stays).
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= self.p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        return logits.masked_fill(drop, float("-inf"))


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Mask logits outside the top-k and outside the smallest set whose probability reaches top-p."""
    if top_k is not None:
        logits = TopK(top_k)(logits)
    if top_p is not None:
        logits = TopP(top_p)(logits)
    return logits


def sampling_warpers(*, temperature: float, top_k: int | None = None,
                     top_p: float | None = None) -> list[LogitProcessor] | None:
    """Temperature, then top-k, then top-p; ``None`` for temperature 0 (greedy: nothing is drawn)."""
    check_number(temperature, "--temperature", minimum=0)
    if temperature == 0:
        return None
    warpers: list[LogitProcessor] = [Temperature(temperature)]
    if top_k is not None:
        warpers.append(TopK(top_k))
    if top_p is not None:
        warpers.append(TopP(top_p))
    return warpers
