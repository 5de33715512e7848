"""Text in, text out: decoding settings, stop strings, streaming and detokenisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ...checks import number
from ...errors import Gpt1Error
from ...settings import check_settings, setting
from ..gpt import GPT
from .beam_search import LENGTH_NORMS, beam_search
from .processors import LogitProcessor, sampling_warpers, scoring_processors
from .sampling import decode


@dataclass(frozen=True)
class DecodeSettings:
    """How to decode; the defaults are `gpt1 generate`'s (sampling at temperature 0.8). ``temperature``
    0 is greedy; ``beams`` > 1 runs beam search (deterministic: temperature, top-k and top-p are not used)."""

    # None: the caller's default (e.g. from the references)
    max_new_tokens: int | None = setting(100, "Most tokens to generate.", rule=number(minimum=1))
    temperature: float = setting(0.8, "Sampling temperature (>= 0); 0 is greedy. Not used by beam search.",
                                 rule=number(minimum=0))
    top_k: int | None = setting(None, "Sample only from the k most likely tokens (k >= 1).", rule=number(minimum=1),
                                show_default="all")
    top_p: float | None = setting(None, "Sample only from the smallest set of tokens reaching this probability (in "
                                  "(0, 1]).", rule=number(above=0, maximum=1), show_default="1")
    beams: int = setting(1, "Beam search with N beams (deterministic) and show the N best with their scores; 1 samples "
                         "(or is greedy).", rule=number(minimum=1))
    length_alpha: float = setting(0.0, "Beam search: alpha; hypotheses are ranked by log P / lp(length) (0: plain log "
                                  "P; > 0 favours longer ones).", flags=("--length-penalty",), rule=number())
    length_norm: str = setting("gnmt", "Beam search: lp = ((5 + length) / 6)^alpha (gnmt, Wu et al. 2016) or "
                               "length^alpha (power).")
    early_stopping: bool = setting(True, "Beam search: stop once N hypotheses are finished; --no-early-stopping goes on "
                                   "until no live beam can beat them.", flags=("--early-stopping/--no-early-stopping",))
    repetition_penalty: float = setting(1.0, "CTRL's penalty on tokens already in the prompt or output (positive logits "
                                        "divided by it, negative multiplied); 1 is none.", rule=number(above=0))
    no_repeat_ngram_size: int = setting(0, "Never repeat an n-gram of this size (prompt included); 0 is off.",
                                        rule=number(minimum=0))
    # The command line takes repeatable strings with \n escapes: `gpt1 generate --stop`.
    stop: tuple[str, ...] = setting((), option=False)

    def check(self) -> "DecodeSettings":
        if self.max_new_tokens is None:
            raise Gpt1Error("--max-new-tokens must be positive, got None")
        check_settings(self)
        if self.beams > 1 and (self.top_k is not None or self.top_p is not None):
            raise Gpt1Error("--top-k and --top-p filter sampling; beam search (--beams > 1) does not sample")
        if self.length_norm not in LENGTH_NORMS:
            raise Gpt1Error(f"--length-norm must be one of {', '.join(LENGTH_NORMS)}, not {self.length_norm!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise Gpt1Error("--stop needs a non-empty string")
        return self

    def processors(self) -> list[LogitProcessor]:
        """The scoring processors: the repetition penalty and the n-gram ban."""
        return scoring_processors(repetition_penalty=self.repetition_penalty,
                                  no_repeat_ngram_size=self.no_repeat_ngram_size)

    def warpers(self) -> list[LogitProcessor] | None:
        """The sampling warpers (temperature, top-k, top-p); ``None`` for greedy decoding."""
        return sampling_warpers(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


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
    """Continue ``prompt_ids`` (already wrapped with :func:`~gpt1cli.tasks.transforms.task_prompt`
    when ``task_format``: then the text is that of the new tokens alone).

    Returns one completion, or ``settings.beams`` of them best first for beam search. Generation
    ends at ``</s>``, at a stop string (the text is cut before it) or after ``max_new_tokens``.
    ``on_text`` receives the text as it becomes final (sampling and greedy only); text that might
    still turn into a stop string is held back until it cannot.
    """
    stops = tuple(settings.stop)
    text_of = _Decoder(tokenizer, [] if task_format else prompt_ids)
    stop_ids = (tokenizer.eos_id,)
    if settings.beams > 1:
        stop_fn = (lambda tokens: cut_at_stop(text_of(tokens), stops)[1]) if stops else None
        beams = beam_search(model, prompt_ids, num_beams=settings.beams, max_new_tokens=settings.max_new_tokens,
                            length_alpha=settings.length_alpha, length_norm=settings.length_norm,
                            early_stopping=settings.early_stopping, repetition_penalty=settings.repetition_penalty,
                            no_repeat_ngram_size=settings.no_repeat_ngram_size, stop_ids=stop_ids, stop_fn=stop_fn)
        out = []
        for beam in beams:
            tokens = beam.tokens[:-1] if beam.finish == "eos" else beam.tokens
            text, _ = cut_at_stop(text_of(tokens), stops)
            out.append(Completion(text, tokens, beam.logprob, beam.score, beam.finish))
        return out
    hold = max((len(s) for s in stops), default=1) - 1
    tokens, logprob, finish, text, shown = [], 0.0, "length", "", 0
    for token, token_logprob in decode(model, prompt_ids, max_new_tokens=settings.max_new_tokens,
                                       processors=settings.processors(), warpers=settings.warpers(),
                                       stop_ids=stop_ids, generator=generator):
        logprob += token_logprob
        if token in stop_ids:
            finish = "eos"
            break
        tokens.append(token)
        text = text_of(tokens)
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
