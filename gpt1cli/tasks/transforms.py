"""The paper's task-aware input transformations.

* classify: ``[start; text; extract]``
* entail:   ``[start; premise; delim; hypothesis; extract]``
* similar:  ``[start; a; delim; b; extract]`` and ``[start; b; delim; a; extract]``
* mcq:      ``[start; context; delim; choice_k; extract]`` for each choice k
* generate: ``[start; prompt; delim]``, then the completion is generated (see :func:`task_prompt`)

Truncation rule, when a sequence exceeds the context: the special tokens and the second
segment (hypothesis, b, or the choice) are kept whole and the first segment (text, premise,
a, context) loses tokens from its left, so the words nearest the answer survive. If the
second segment alone does not fit, it too is cut from the left.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import Example


@dataclass
class Specials:
    start: int
    delim: int
    extract: int


def _fit(first: list[int], second: list[int] | None, n_ctx: int) -> tuple[list[int], list[int] | None]:
    overhead = 2 if second is None else 3
    budget = n_ctx - overhead
    if second is not None and len(second) > budget:
        second = second[-budget:] if budget > 0 else []
    room = budget - (len(second) if second is not None else 0)
    if len(first) > room:
        first = first[len(first) - room:] if room > 0 else []
    return first, second


def build(first: list[int], second: list[int] | None, specials: Specials, n_ctx: int) -> list[int]:
    """One transformed sequence, truncated by the rule above."""
    first, second = _fit(first, second, n_ctx)
    if second is None:
        return [specials.start, *first, specials.extract]
    return [specials.start, *first, specials.delim, *second, specials.extract]


def transform(example: Example, task: str, encode, specials: Specials, n_ctx: int) -> list[list[int]]:
    """The sequences the model reads for one example: 1 (classify, entail), 2 (similar) or k (mcq)."""
    f = example.fields
    if task == "classify":
        return [build(encode(f["text"]), None, specials, n_ctx)]
    if task == "entail":
        return [build(encode(f["premise"]), encode(f["hypothesis"]), specials, n_ctx)]
    if task == "similar":
        a, b = encode(f["a"]), encode(f["b"])
        return [build(a, b, specials, n_ctx), build(b, a, specials, n_ctx)]
    context = encode(f["context"])
    return [build(context, encode(choice), specials, n_ctx) for choice in f["choices"]]


def task_prompt(tokenizer, prompt_ids: list[int], n_ctx: int, max_new_tokens: int) -> list[int]:
    """``[start; prompt; delim]``, the generate task's format. A long prompt loses tokens from its
    left (as in fine-tuning) so that ``min(max_new_tokens, n_ctx // 2)`` tokens fit after it."""
    room = n_ctx - 2 - min(max_new_tokens, n_ctx // 2)
    prompt_ids = prompt_ids[len(prompt_ids) - room:] if len(prompt_ids) > room else prompt_ids
    return [tokenizer.start_id, *prompt_ids, tokenizer.delim_id]
