"""The paper's input transformations and the truncation rule, token by token.

A fake ``encode`` turns "10 11 12" into [10, 11, 12], so every expected sequence is written out
exactly. Special ids are the tokenizer's: start 3, delim 4, extract 5.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from support import TASK_N_CTX, write_task_jsonl
from gpt1cli.tasks.data import Example
from gpt1cli.tasks.transforms import Specials, build, transform

S, D, X = 3, 4, 5
SPECIALS = Specials(start=S, delim=D, extract=X)


def encode(text: str) -> list[int]:
    return [int(t) for t in text.split()]


def ids(lo: int, hi: int) -> list[int]:
    return list(range(lo, hi))


def text(lo: int, hi: int) -> str:
    return " ".join(str(i) for i in range(lo, hi))


def ex(**fields) -> Example:
    return Example(fields, 0, "test")


# ---------------------------------------------------------------------------------------------
# Untruncated


def test_classify_is_start_text_extract():
    assert transform(ex(text="10 11 12"), "classify", encode, SPECIALS, 64) == [[S, 10, 11, 12, X]]


def test_entail_is_start_premise_delim_hypothesis_extract():
    got = transform(ex(premise="10 11", hypothesis="20 21 22"), "entail", encode, SPECIALS, 64)
    assert got == [[S, 10, 11, D, 20, 21, 22, X]]


def test_similar_gives_both_orders():
    got = transform(ex(a="10 11", b="20"), "similar", encode, SPECIALS, 64)
    assert got == [[S, 10, 11, D, 20, X], [S, 20, D, 10, 11, X]]


def test_mcq_gives_one_sequence_per_choice_in_order():
    got = transform(ex(context="10 11", choices=["20", "30 31", "40 41 42"]), "mcq", encode, SPECIALS, 64)
    assert got == [[S, 10, 11, D, 20, X], [S, 10, 11, D, 30, 31, X], [S, 10, 11, D, 40, 41, 42, X]]


def test_sequences_at_exactly_the_context_are_not_cut():
    assert build(ids(10, 18), None, SPECIALS, 10) == [S, *ids(10, 18), X]
    assert build(ids(10, 14), ids(20, 23), SPECIALS, 10) == [S, 10, 11, 12, 13, D, 20, 21, 22, X]


# ---------------------------------------------------------------------------------------------
# Truncated: the first segment loses tokens from its LEFT; specials and second segment survive


def test_classify_truncation_keeps_the_end_of_the_text():
    got = transform(ex(text=text(10, 30)), "classify", encode, SPECIALS, 8)
    assert got == [[S, 24, 25, 26, 27, 28, 29, X]]


def test_entail_truncation_trims_the_premise_from_the_left():
    got = transform(ex(premise=text(10, 30), hypothesis="40 41 42"), "entail", encode, SPECIALS, 10)
    assert got == [[S, 26, 27, 28, 29, D, 40, 41, 42, X]]


def test_similar_truncation_trims_whichever_segment_comes_first():
    got = transform(ex(a=text(10, 20), b="40 41 42"), "similar", encode, SPECIALS, 9)
    # [a; b]: b is kept whole, a keeps its last 3 tokens
    assert got[0] == [S, 17, 18, 19, D, 40, 41, 42, X]
    # [b; a]: a (10 tokens) is now the second segment and alone does not fit: it too is cut
    # from its left, and b is trimmed from its left as well
    assert len(got[1]) == 9 and got[1][0] == S and got[1][-1] == X
    kept_b, kept_a = got[1][1:got[1].index(D)], got[1][got[1].index(D) + 1:-1]
    assert kept_a == list(range(20 - len(kept_a), 20)) and len(kept_a) >= 5
    assert kept_b == [40, 41, 42][3 - len(kept_b):]


def test_mcq_truncation_keeps_every_choice_whole():
    choices = ["40", "50 51 52 53", "60 61"]
    got = transform(ex(context=text(10, 30), choices=choices), "mcq", encode, SPECIALS, 10)
    assert got == [
        [S, 24, 25, 26, 27, 28, 29, D, 40, X],
        [S, 27, 28, 29, D, 50, 51, 52, 53, X],
        [S, 25, 26, 27, 28, 29, D, 60, 61, X],
    ]


def test_a_second_segment_that_cannot_fit_is_cut_from_its_left():
    got = build(ids(10, 20), ids(40, 60), SPECIALS, 10)
    assert len(got) == 10 and got[0] == S and got[-1] == X
    second = got[got.index(D) + 1:-1]
    assert second == ids(60 - len(second), 60)  # a suffix of the second segment


def test_a_second_segment_that_fits_alone_is_kept_whole():
    """Module docstring: the second segment is cut only if it *alone* does not fit. Here it is
    exactly n_ctx - 3 tokens: [start, delim, second, extract] fills the context, so the whole
    second segment must survive and the first segment gives up all its tokens."""
    got = build(ids(10, 20), ids(40, 47), SPECIALS, 10)
    assert got == [S, D, 40, 41, 42, 43, 44, 45, 46, X]


@settings(max_examples=300, deadline=None)
@given(n_first=st.integers(0, 40), n_second=st.integers(1, 40), n_ctx=st.integers(6, 48))
def test_truncation_rule_property(n_first, n_second, n_ctx):
    first, second = ids(100, 100 + n_first), ids(200, 200 + n_second)
    got = build(first, second, SPECIALS, n_ctx)
    assert got[0] == S and got[-1] == X and got.count(D) == 1
    assert len(got) <= n_ctx
    kept_first, kept_second = got[1:got.index(D)], got[got.index(D) + 1:-1]
    assert kept_first == first[len(first) - len(kept_first):]  # a suffix: cut from the left
    if n_second <= n_ctx - 4:  # fits with room to spare: whole, and the first keeps all the room
        assert kept_second == second
        assert len(got) == min(n_ctx, n_first + n_second + 3)
        assert len(kept_first) == min(n_first, n_ctx - 3 - n_second)
    else:  # (the exact boundary is pinned by test_a_second_segment_that_fits_alone_is_kept_whole)
        assert kept_second == second[len(second) - len(kept_second):]
        assert len(got) >= n_ctx - 1


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 60), n_ctx=st.integers(3, 48))
def test_single_segment_truncation_property(n, n_ctx):
    got = build(ids(100, 100 + n), None, SPECIALS, n_ctx)
    assert got == [S, *ids(100 + max(0, n - (n_ctx - 2)), 100 + n), X]


# ---------------------------------------------------------------------------------------------
# With the real tokenizer


def test_real_tokenizer_specials_and_segments(task_assets):
    from gpt1cli.tokenizer import load_tokenizer
    from gpt1cli.tasks.data import load_examples
    from gpt1cli.tasks.inference import encode_examples

    tok = load_tokenizer(task_assets.tokenizer)
    assert (tok.pad_id, tok.eos_id, tok.start_id, tok.delim_id, tok.extract_id) == (0, 2, 3, 4, 5)
    path = write_task_jsonl(task_assets.root / "transform-entail.jsonl",
                            [{"premise": "the old dog sat", "hypothesis": "a sunny morning", "label": "x"}])
    (seqs,) = encode_examples(load_examples(path, "entail"), "entail", tok, TASK_N_CTX)
    assert seqs == [[3, *tok.encode("the old dog sat"), 4, *tok.encode("a sunny morning"), 5]]
    # control ids never come out of encoding text
    assert not {0, 2, 3, 4, 5} & set(tok.encode("the old dog sat <start> <delim> <extract>"))
