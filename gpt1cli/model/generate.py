"""Decoding with a KV cache: greedy, temperature, top-k and top-p sampling, beam search, the
repetition penalty, the n-gram ban and stop strings, for plain and task-formatted prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..checks import check_number
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
    check_prompt(model, prompt)
    check_number(temperature, "--temperature", minimum=0)
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


# ---------------------------------------------------------------------------------------------
# Logit processors shared by sampling and beam search


def apply_repetition_penalty(logits: torch.Tensor, history: list[int], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019) on ``(V,)`` logits: every token already in
    ``history`` has a positive logit divided by ``penalty`` and a negative one multiplied by it."""
    if penalty == 1.0 or not history:
        return logits
    seen = torch.tensor(sorted(set(history)), device=logits.device)
    values = logits.index_select(-1, seen)
    values = torch.where(values > 0, values / penalty, values * penalty)
    return logits.index_copy(-1, seen, values)


def banned_ngram_tokens(history: list[int], n: int) -> set[int]:
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


def process_logits(logits: torch.Tensor, history: list[int], *, repetition_penalty: float = 1.0,
                   no_repeat_ngram_size: int = 0) -> torch.Tensor:
    """Repetition penalty, then the n-gram ban (banned tokens get -inf), for one ``(V,)`` row.

    ``history`` is everything the model has read: the prompt and the tokens generated so far.
    """
    logits = apply_repetition_penalty(logits, history, repetition_penalty)
    banned = banned_ngram_tokens(history, no_repeat_ngram_size)
    if banned:
        logits = logits.index_fill(-1, torch.tensor(sorted(banned), device=logits.device), float("-inf"))
    return logits


def check_prompt(model: GPT, prompt: list[int]) -> None:
    n_ctx = model.config.n_ctx
    if not prompt:
        raise Gpt1Error("the prompt is empty: give some text to continue")
    if len(prompt) >= n_ctx:
        raise Gpt1Error(f"the prompt is {len(prompt)} tokens, the model's context is {n_ctx}: shorten the prompt")


@torch.no_grad()
def generate_processed(
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
) -> Iterator[tuple[int, float]]:
    """Like :func:`generate_tokens` with the repetition penalty and the n-gram ban applied to the
    logits first; yields ``(token, log-probability under the processed distribution)``.

    The log-probability is that of the distribution the token was chosen from before temperature,
    top-k and top-p (for greedy decoding: exactly what beam search sums).
    """
    n_ctx = model.config.n_ctx
    check_prompt(model, prompt)
    check_number(temperature, "--temperature", minimum=0)
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
        logits = model.logits(hidden[0, -1]).float()
        logits = process_logits(logits, history, repetition_penalty=repetition_penalty,
                                no_repeat_ngram_size=no_repeat_ngram_size)
        if not torch.isfinite(logits).any():
            return  # the n-gram ban leaves no token
        logprobs = torch.log_softmax(logits, dim=-1)
        if temperature == 0:
            token = int(logits.argmax(dim=-1))
        else:
            filtered = filter_logits(logits.unsqueeze(0) / temperature, top_k=top_k, top_p=top_p)
            token = int(torch.multinomial(torch.softmax(filtered, dim=-1), 1, generator=generator))
        history.append(token)
        yield token, float(logprobs[token])
        if token in stop_ids:
            return
        pending = torch.tensor([[token]], device=device)


# ---------------------------------------------------------------------------------------------
# Beam search

LENGTH_NORMS = ("gnmt", "power")


class BeamCache(KVCache):
    """A KV cache whose rows (one per beam) can be reordered and duplicated."""

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``i`` becomes old row ``index[i]`` (rows may repeat: a beam with two children)."""
        for layer, keys in enumerate(self.keys):
            if keys is not None:
                self.keys[layer] = keys.index_select(0, index)
                self.values[layer] = self.values[layer].index_select(0, index)


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
    half-context, as in :func:`generate_tokens`.
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
    processing = repetition_penalty != 1.0 or no_repeat_ngram_size > 0

    def score(logprob: float, length: int) -> float:
        return logprob / length_penalty(length, length_alpha, length_norm)

    def best_possible(logprob: float, length: int) -> float:
        # An extension has logprob' <= logprob <= 0 and a length in (length, max_new_tokens]; the
        # penalty is monotone in the length, so the best score lies at one end of that range.
        return max(score(logprob, length + 1), score(logprob, max_new_tokens))

    live: list[tuple[list[int], float]] = [([], 0.0)]  # generated tokens, summed log-probability
    finished: list[Beam] = []
    cache = BeamCache(model.config.n_layer)
    hidden = model(torch.tensor([prompt], device=device), cache=cache)
    for step in range(max_new_tokens):
        logits = model.logits(hidden[:, -1]).float()
        if processing:
            logits = torch.stack([
                process_logits(logits[row], prompt + tokens, repetition_penalty=repetition_penalty,
                               no_repeat_ngram_size=no_repeat_ngram_size)
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
            cache = BeamCache(model.config.n_layer)
            window = [(prompt + tokens)[-(n_ctx // 2):] for tokens, _ in live]
            hidden = model(torch.tensor(window, device=device), cache=cache)
        else:
            cache.reorder(torch.tensor(parents, device=device))
            hidden = model(torch.tensor([[tokens[-1]] for tokens, _ in live], device=device), cache=cache)
    finished.sort(key=lambda b: b.score, reverse=True)
    return finished[:num_return]


# ---------------------------------------------------------------------------------------------
# Text in, text out: prompt formats, stop strings, streaming


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode. ``temperature`` 0 is greedy; ``beams`` > 1 runs beam search (deterministic:
    temperature, top-k and top-p are not used)."""

    max_new_tokens: int | None = 100  # None: the caller's default (e.g. from the references)
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    beams: int = 1
    length_alpha: float = 0.0
    length_norm: str = "gnmt"
    early_stopping: bool = True
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    stop: tuple[str, ...] = ()

    def check(self) -> "DecodeSettings":
        if self.max_new_tokens is None:
            raise Gpt1Error("--max-new-tokens must be positive, got None")
        check_number(self.max_new_tokens, "--max-new-tokens", minimum=1)
        check_number(self.temperature, "--temperature", minimum=0)
        check_number(self.top_p, "--top-p", above=0, maximum=1)
        check_number(self.top_k, "--top-k", minimum=1)
        check_number(self.beams, "--beams", minimum=1)
        check_number(self.length_alpha, "--length-penalty")
        check_number(self.repetition_penalty, "--repetition-penalty", above=0)
        check_number(self.no_repeat_ngram_size, "--no-repeat-ngram-size", minimum=0)
        if self.beams > 1 and (self.top_k is not None or self.top_p is not None):
            raise Gpt1Error("--top-k and --top-p filter sampling; beam search (--beams > 1) does not sample")
        if self.length_norm not in LENGTH_NORMS:
            raise Gpt1Error(f"--length-norm must be one of {', '.join(LENGTH_NORMS)}, not {self.length_norm!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise Gpt1Error("--stop needs a non-empty string")
        return self


@dataclass
class Completion:
    """One generated continuation: its text (cut before a stop string), its tokens (without the
    end token), the summed log-probability of the tokens chosen, the score it was ranked by
    (``logprob / length_penalty`` for beams; ``logprob`` otherwise) and why it ended."""

    text: str
    tokens: list[int]
    logprob: float
    score: float
    finish: str  # eos, stop, length

    def to_dict(self) -> dict:
        return {"text": self.text, "score": round(self.score, 6), "logprob": round(self.logprob, 6),
                "tokens": len(self.tokens), "finish": self.finish}


def task_prompt(tokenizer, prompt_ids: list[int], n_ctx: int, max_new_tokens: int) -> list[int]:
    """``[start; prompt; delim]``, the generate task's format. A long prompt loses tokens from its
    left (as in fine-tuning) so that ``min(max_new_tokens, n_ctx // 2)`` tokens fit after it."""
    room = n_ctx - 2 - min(max_new_tokens, n_ctx // 2)
    prompt_ids = prompt_ids[len(prompt_ids) - room:] if len(prompt_ids) > room else prompt_ids
    return [tokenizer.start_id, *prompt_ids, tokenizer.delim_id]


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to (without) the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def continuation_text(tokenizer, context: list[int], tokens: list[int]) -> str:
    """The text ``tokens`` add after ``context``: both decoded together, minus the context's text.

    Decoded apart, SentencePiece drops the word boundary at the join ("list" + "of" reads
    "listof") and byte-fallback pieces of one character split across the join decode to U+FFFD
    on each side. Decoded together, the continuation starts where the context's text and the
    whole text part: a character completed by the continuation's bytes belongs to it.
    """
    return _Decoder(tokenizer, context)(tokens)


class _Decoder:
    """Text of generated tokens after a context (pieces and byte fallbacks only make sense together)."""

    def __init__(self, tokenizer, context: list[int]):
        self.tokenizer, self.context = tokenizer, list(context)
        self.head = tokenizer.decode(self.context) if self.context else ""

    def __call__(self, tokens: list[int]) -> str:
        if not self.context:
            return self.tokenizer.decode(tokens)
        whole = self.tokenizer.decode(self.context + list(tokens))
        return whole[_common_prefix(self.head, whole):]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low] and a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


def complete(
    model: GPT,
    tokenizer,
    prompt_ids: list[int],
    settings: DecodeSettings,
    *,
    task_format: bool = False,
    generator: torch.Generator | None = None,
    on_text: Callable[[str], None] | None = None,
) -> list[Completion]:
    """Continue ``prompt_ids`` (already wrapped with :func:`task_prompt` when ``task_format``).

    Returns one completion, or ``settings.beams`` of them best first for beam search. Generation
    ends at ``</s>``, at a stop string (the text is cut before it) or after ``max_new_tokens``.
    ``on_text`` receives the text as it becomes final (sampling and greedy only); text that might
    still turn into a stop string is held back until it cannot.
    """
    stops = tuple(settings.stop)
    decode = _Decoder(tokenizer, [] if task_format else prompt_ids)
    stop_ids = (tokenizer.eos_id,)
    if settings.beams > 1:
        stop_fn = (lambda tokens: cut_at_stop(decode(tokens), stops)[1]) if stops else None
        beams = beam_search(model, prompt_ids, num_beams=settings.beams, max_new_tokens=settings.max_new_tokens,
                            length_alpha=settings.length_alpha, length_norm=settings.length_norm,
                            early_stopping=settings.early_stopping, repetition_penalty=settings.repetition_penalty,
                            no_repeat_ngram_size=settings.no_repeat_ngram_size, stop_ids=stop_ids, stop_fn=stop_fn)
        out = []
        for beam in beams:
            tokens = beam.tokens[:-1] if beam.finish == "eos" else beam.tokens
            text, _ = cut_at_stop(decode(tokens), stops)
            out.append(Completion(text, tokens, beam.logprob, beam.score, beam.finish))
        return out
    hold = max((len(s) for s in stops), default=1) - 1
    tokens, logprob, finish, text, shown = [], 0.0, "length", "", 0
    for token, token_logprob in generate_processed(
            model, prompt_ids, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_k=settings.top_k, top_p=settings.top_p, repetition_penalty=settings.repetition_penalty,
            no_repeat_ngram_size=settings.no_repeat_ngram_size, stop_ids=stop_ids, generator=generator):
        logprob += token_logprob
        if token in stop_ids:
            finish = "eos"
            break
        tokens.append(token)
        text = decode(tokens)
        if stops:
            text, stopped = cut_at_stop(text, stops)
            if stopped:
                finish = "stop"
                break
        if on_text is not None and not text.endswith("\ufffd"):
            final = len(text) - hold
            if final > shown:
                on_text(text[shown:final])
                shown = final
    if on_text is not None and len(text) > shown:
        on_text(text[shown:])
    return [Completion(text, tokens, logprob, logprob, finish)]
