"""Beam search with a KV cache row per beam, length penalties and early stopping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...errors import Gpt1Error
from ..gpt import GPT, KVCache
from .processors import apply_processors, scoring_processors
from .sampling import check_prompt

LENGTH_NORMS = ("gnmt", "power")


def length_penalty(length: int, alpha: float, norm: str = "gnmt") -> float:
    """The divisor of a hypothesis' log-probability.

    ``gnmt`` (Wu et al., 2016): ``((5 + length) / 6) ** alpha``; ``power``: ``length ** alpha``.
    ``alpha`` 0 gives 1 (plain sum of log-probabilities); larger alpha favours longer outputs.
    ``length`` counts the generated tokens, the end token included.
    """
    if alpha == 0.0:
        return 1.0
    if norm == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    if norm == "power":
        return float(max(length, 1)) ** alpha
    raise Gpt1Error(f"--length-norm must be one of {', '.join(LENGTH_NORMS)}, not {norm!r}")


@dataclass
class Beam:
    """A hypothesis: the generated tokens (the end token included when it ended on one), the sum of
    their log-probabilities, the length-penalised score it is ranked by, and why it ended."""

    tokens: list[int]
    logprob: float
    score: float
    finish: str  # "eos", "stop" (a stop string) or "length" (the token budget)


@torch.no_grad()
def beam_search(
    model: GPT,
    prompt: list[int],
    *,
    num_beams: int = 4,
    max_new_tokens: int = 100,
    length_alpha: float = 0.0,
    length_norm: str = "gnmt",
    early_stopping: bool = True,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    stop_ids: tuple[int, ...] = (),
    stop_fn: Callable[[list[int]], bool] | None = None,
    num_return: int | None = None,
) -> list[Beam]:
    """The ``num_return`` (default and at most ``num_beams``) best hypotheses, best first.

    Every step extends each live beam by every token and takes the ``2 x num_beams`` best
    candidates by summed log-probability. A candidate that ends in a stop id (or for which
    ``stop_fn(tokens)`` holds) is finished if it ranks among the first ``num_beams``; the others
    stay live until ``num_beams`` are live. The KV cache keeps one row per live beam and is
    reordered (rows duplicated or dropped) to follow each beam's parent. Hypotheses that reach
    ``max_new_tokens`` are finished as they are. Finished hypotheses are ranked by
    ``logprob / length_penalty(length)``.

    ``early_stopping``: stop as soon as ``num_beams`` hypotheses are finished. Without it the
    search goes on until no live beam can still beat the worst of the ``num_beams`` best finished
    ones (an exact test, since a hypothesis' log-probability only falls as it grows), or the
    budget is spent. Past the context the cache is rebuilt from each beam's most recent
    half-context, as in :func:`~.sampling.decode`.
    """
    n_ctx = model.config.n_ctx
    check_prompt(model, prompt)
    if num_beams < 1:
        raise Gpt1Error(f"--beams must be >= 1, got {num_beams}")
    if max_new_tokens < 1:
        raise Gpt1Error(f"--max-new-tokens must be positive, got {max_new_tokens}")
    num_return = num_beams if num_return is None else min(num_return, num_beams)
    length_penalty(1, length_alpha, length_norm)  # checks the norm's name
    model.eval()
    device = next(model.parameters()).device
    processors = scoring_processors(repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)

    def score(logprob: float, length: int) -> float:
        return logprob / length_penalty(length, length_alpha, length_norm)

    def best_possible(logprob: float, length: int) -> float:
        # An extension has logprob' <= logprob <= 0 and a length in (length, max_new_tokens]; the
        # penalty is monotone in the length, so the best score lies at one end of that range.
        return max(score(logprob, length + 1), score(logprob, max_new_tokens))

    live: list[tuple[list[int], float]] = [([], 0.0)]  # generated tokens, summed log-probability
    finished: list[Beam] = []
    cache = KVCache(model.config.n_layer)
    hidden = model(torch.tensor([prompt], device=device), cache=cache)
    for step in range(max_new_tokens):
        logits = model.logits(hidden[:, -1]).float()
        if processors:
            logits = torch.stack([apply_processors(processors, logits[row], prompt + tokens)
                                  for row, (tokens, _) in enumerate(live)])
        totals = torch.log_softmax(logits, dim=-1) + torch.tensor([lp for _, lp in live], device=device).unsqueeze(1)
        vocab = totals.shape[1]
        values, flat = torch.topk(totals.view(-1), min(2 * num_beams, totals.numel()))
        last_step = step == max_new_tokens - 1
        parents, next_live, at_budget = [], [], 0
        for rank, (value, index) in enumerate(zip(values.tolist(), flat.tolist())):
            if value == float("-inf"):
                break  # every remaining continuation is banned
            parent, token = divmod(index, vocab)
            tokens = live[parent][0] + [token]
            finish = "eos" if token in stop_ids else ("stop" if stop_fn is not None and stop_fn(tokens) else None)
            if finish is not None:
                if rank < num_beams:  # only a competitive hypothesis may finish
                    finished.append(Beam(tokens, value, score(value, len(tokens)), finish))
                continue
            if last_step:
                finished.append(Beam(tokens, value, score(value, len(tokens)), "length"))
                at_budget += 1
                if at_budget == num_beams:
                    break
                continue
            parents.append(parent)
            next_live.append((tokens, value))
            if len(next_live) == num_beams:
                break
        live = next_live
        if not live:
            break
        if len(finished) >= num_beams:
            if early_stopping:
                break
            worst_kept = sorted((b.score for b in finished), reverse=True)[num_beams - 1]
            if max(best_possible(lp, len(tokens)) for tokens, lp in live) <= worst_kept:
                break
        if cache.length + 1 > n_ctx:
            cache = KVCache(model.config.n_layer)
            window = [(prompt + tokens)[-(n_ctx // 2):] for tokens, _ in live]
            hidden = model(torch.tensor(window, device=device), cache=cache)
        else:
            cache.reorder(torch.tensor(parents, device=device))
            hidden = model(torch.tensor([[tokens[-1]] for tokens, _ in live], device=device), cache=cache)
    finished.sort(key=lambda b: b.score, reverse=True)
    return finished[:num_return]
