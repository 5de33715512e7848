"""Decoding: beam search (1 beam = greedy, exact with enough beams, scores are the sequences'
log-probabilities, a memorised text comes back), the repetition penalty, the n-gram ban, stop
strings, and the `gpt1 generate` options (--beams, --stop, --input/--out)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

import support
from gpt1cli.config import preset
from gpt1cli.errors import Gpt1Error
from gpt1cli.model.generation.beam_search import beam_search, length_penalty
from gpt1cli.model.generation.completion import DecodeSettings, complete, cut_at_stop
from gpt1cli.model.generation.processors import (
    NoRepeatNGram,
    RepetitionPenalty,
    apply_repetition_penalty,
    banned_ngram_tokens,
)
from gpt1cli.model.generation.sampling import decode, generate_tokens
from gpt1cli.model.gpt import GPT, KVCache
from gpt1cli.tasks.transforms import task_prompt

PROMPT = "The old farmer walked"


def random_model(vocab: int, n_ctx: int, std: float, seed: int = 0) -> GPT:
    """A random tiny model whose weights are scaled up so its next-token distributions are peaked
    enough for beams to disagree with greedy decoding."""
    torch.manual_seed(seed)
    model = GPT(preset("tiny", vocab, n_ctx=n_ctx, dropout=0.0, attn_dropout=0.0)).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, std)
    return model


@pytest.fixture(scope="module")
def peaked():
    return random_model(40, 24, 0.1)


@torch.no_grad()
def sequence_logprobs(model: GPT, prompt: list[int], tokens: list[int]) -> list[float]:
    """Teacher-forced log-probabilities of ``tokens`` after ``prompt``, one full forward, no cache."""
    x = torch.tensor([prompt + tokens])
    logprobs = torch.log_softmax(model.logits(model(x[:, :-1])).float(), dim=-1)[0]
    return [float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(tokens)]


def greedy(model, prompt, n, **kw) -> list[int]:
    return list(generate_tokens(model, prompt, max_new_tokens=n, temperature=0, **kw))


# ---------------------------------------------------------------------------------------------
# Beam search


def test_one_beam_is_greedy(trained, peaked):
    model, tok = trained
    cases = [(model, tok.encode(PROMPT), (tok.eos_id,)), (model, tok.encode("A cat"), ()),
             (peaked, [3, 1, 4], ()), (peaked, [5, 9], (7,))]
    for m, prompt, stop_ids in cases:
        n = m.config.n_ctx - len(prompt) - 2
        expected = greedy(m, prompt, n, stop_ids=stop_ids)
        for early in (True, False):
            beams = beam_search(m, prompt, num_beams=1, max_new_tokens=n, stop_ids=stop_ids, early_stopping=early)
            assert len(beams) == 1
            assert beams[0].tokens == expected
            assert beams[0].logprob == pytest.approx(sum(sequence_logprobs(m, prompt, expected)), abs=1e-4)


def test_one_beam_is_greedy_past_the_context(peaked):
    prompt = [1, 2, 3, 4, 5]
    n = 3 * peaked.config.n_ctx  # the cache is rebuilt from the recent half-context several times
    beams = beam_search(peaked, prompt, num_beams=1, max_new_tokens=n)
    assert beams[0].tokens == greedy(peaked, prompt, n)
    wide = beam_search(peaked, prompt, num_beams=3, max_new_tokens=n)
    assert [len(b.tokens) for b in wide] == [n, n, n]


def test_enough_beams_find_the_exact_best_sequences():
    """With V^(L-1) beams nothing is ever pruned: the search returns the true top sequences of
    length L, found by enumerating all V^L of them with full forwards."""
    vocab, length = 5, 3
    model = random_model(vocab, 12, 0.5, seed=3)
    prompt = [1, 2]
    scored = sorted(((sum(sequence_logprobs(model, prompt, list(seq))), list(seq))
                     for seq in itertools.product(range(vocab), repeat=length)), reverse=True)
    beams = beam_search(model, prompt, num_beams=vocab ** (length - 1), max_new_tokens=length, early_stopping=False)
    assert len(beams) == vocab ** (length - 1)
    for beam, (logprob, seq) in zip(beams, scored):
        assert beam.tokens == seq
        assert beam.logprob == pytest.approx(logprob, abs=1e-4)
        assert beam.score == beam.logprob and beam.finish == "length"
    assert beams[0].logprob >= sum(sequence_logprobs(model, prompt, greedy(model, prompt, length))) - 1e-5


def test_beams_score_their_sequences_and_beat_greedy_on_these_cases(trained, peaked):
    """Returned scores are the sequences' summed log-probabilities (no length penalty), best first,
    and the best is never below greedy's score for the same budget on these models and prompts.
    (That is an empirical property of beam search, not a theorem: a greedy path pruned early can
    end up better. With enough beams it is exact, tested above.)"""
    model, tok = trained
    cases = [(model, tok.encode(p)) for p in (PROMPT, "A cat", "Some bird sang", "The river")]
    cases += [(peaked, torch.randint(0, 40, (3,), generator=torch.Generator().manual_seed(s)).tolist()) for s in range(8)]
    improved = 0
    for m, prompt in cases:
        budget = 8
        greedy_tokens = greedy(m, prompt, budget)
        greedy_score = sum(sequence_logprobs(m, prompt, greedy_tokens))
        for n in (2, 3, 5):
            beams = beam_search(m, prompt, num_beams=n, max_new_tokens=budget)
            assert len(beams) == n
            assert len({tuple(b.tokens) for b in beams}) == n  # distinct hypotheses
            scores = [b.score for b in beams]
            assert scores == sorted(scores, reverse=True)
            for beam in beams:
                assert len(beam.tokens) == budget
                assert beam.logprob == pytest.approx(sum(sequence_logprobs(m, prompt, beam.tokens)), abs=1e-4)
            assert beams[0].logprob >= greedy_score - 1e-4
            improved += beams[0].logprob > greedy_score + 1e-3
    assert improved >= 5  # the beams found better sequences than greedy in several cases


def test_finished_hypotheses_and_early_stopping(peaked):
    prompt = [3, 1, 4]
    stop = greedy(peaked, prompt, 6)[2]  # greedy ends at its third token
    beams = beam_search(peaked, prompt, num_beams=3, max_new_tokens=10, stop_ids=(stop,))
    ended = [b for b in beams if b.finish == "eos"]
    assert ended and all(b.tokens[-1] == stop and stop not in b.tokens[:-1] for b in ended)
    assert all(b.finish in ("eos", "length") for b in beams)
    exact = beam_search(peaked, prompt, num_beams=3, max_new_tokens=10, stop_ids=(stop,), early_stopping=False)
    assert exact[0].score >= beams[0].score - 1e-6  # searching on can only find better or equal


def test_length_penalty_forms_and_effect(peaked):
    assert length_penalty(7, 0.0) == 1.0
    assert length_penalty(7, 1.0, "gnmt") == pytest.approx(2.0)  # (5 + 7) / 6
    assert length_penalty(4, 0.5, "power") == pytest.approx(2.0)
    with pytest.raises(Gpt1Error, match="--length-norm"):
        length_penalty(3, 1.0, "cubic")
    prompt = [3, 1, 4]
    stop = greedy(peaked, prompt, 6)[1]
    plain = beam_search(peaked, prompt, num_beams=4, max_new_tokens=8, stop_ids=(stop,), early_stopping=False)
    long = beam_search(peaked, prompt, num_beams=4, max_new_tokens=8, stop_ids=(stop,), early_stopping=False,
                       length_alpha=2.0)
    for beam in long:
        assert beam.score == pytest.approx(beam.logprob / length_penalty(len(beam.tokens), 2.0))
    # A strong penalty prefers longer hypotheses: the best is at least as long as without it.
    assert len(long[0].tokens) >= len(plain[0].tokens)


def test_kv_cache_reorders_rows():
    cache = KVCache(2)
    for layer in range(2):
        cache.append(layer, torch.arange(3.0).view(3, 1, 1, 1).expand(3, 2, 4, 5).clone(), torch.zeros(3, 2, 4, 5))
    cache.reorder(torch.tensor([2, 2, 0, 1]))
    assert cache.keys[1].shape == (4, 2, 4, 5)
    assert cache.keys[0][:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0, 1.0]


def test_beam_search_reproduces_a_memorised_text():
    torch.manual_seed(0)
    vocab, n_ctx = 30, 32
    text = torch.randint(6, vocab, (24,), generator=torch.Generator().manual_seed(5)).tolist()
    model = GPT(preset("tiny", vocab, n_ctx=n_ctx, dropout=0.0, attn_dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.tensor([text])
    for _ in range(150):
        loss = model(x[:, :-1], targets=x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.05
    model.eval()
    for n in (1, 3):
        beams = beam_search(model, text[:3], num_beams=n, max_new_tokens=len(text) - 3)
        assert beams[0].tokens == text[3:]
        assert beams[0].logprob > -1.0


# ---------------------------------------------------------------------------------------------
# Repetition controls and stop strings


def test_repetition_penalty_is_ctrls_formula():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.0])
    out = apply_repetition_penalty(logits, [0, 1, 1, 3], 2.0)
    assert out.tolist() == [1.0, -2.0, 0.5, -6.0, 1.0]
    assert apply_repetition_penalty(logits, [0, 1], 1.0) is logits


def test_repetition_penalty_prevents_repeats(peaked):
    prompt = [3, 1, 4]
    plain = greedy(peaked, prompt, 20)
    assert len(set(plain)) < len(plain)  # this model loops without help
    penalised = [t for t, _ in decode(peaked, prompt, max_new_tokens=20, processors=[RepetitionPenalty(1e6)])]
    assert len(set(penalised)) == len(penalised) and not set(penalised) & set(prompt)


def test_banned_ngrams():
    assert banned_ngram_tokens([1, 2, 3, 1, 2], 3) == {3}
    assert banned_ngram_tokens([1, 2, 1, 3, 1], 2) == {2, 3}
    assert banned_ngram_tokens([4, 5], 1) == {4, 5}
    assert banned_ngram_tokens([1, 2], 3) == set()


@pytest.mark.parametrize("size", [2, 3])
def test_no_repeat_ngram_prevents_repeated_ngrams(peaked, size):
    prompt = [3, 1, 4]

    def has_repeat(seq):
        grams = [tuple(seq[i : i + size]) for i in range(len(seq) - size + 1)]
        return len(grams) != len(set(grams))

    assert has_repeat(prompt + greedy(peaked, prompt, 20))
    out = [t for t, _ in decode(peaked, prompt, max_new_tokens=20, processors=[NoRepeatNGram(size)])]
    assert len(out) == 20 and not has_repeat(prompt + out)
    for beam in beam_search(peaked, prompt, num_beams=3, max_new_tokens=20, no_repeat_ngram_size=size):
        assert not has_repeat(prompt + beam.tokens)


def test_cut_at_stop():
    assert cut_at_stop("one two. three", (".", "two")) == ("one ", True)
    assert cut_at_stop("one two", ("x",)) == ("one two", False)


class WordTokenizer:
    """Token i reads as "<i>"; 0 is the end token."""

    eos_id = 0

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids if i != 0)


def test_stop_strings_cut_sampled_output(trained):
    model, tok = trained
    prompt = tok.encode(PROMPT)
    settings = DecodeSettings(max_new_tokens=20, temperature=1.0)
    base = complete(model, tok, prompt, settings, generator=torch.Generator().manual_seed(0))[0]
    words = base.text.split()
    assert len(words) >= 4, base
    stop = " " + words[2]
    expected = base.text[: base.text.index(stop)]
    shown = []
    cut = complete(model, tok, prompt, DecodeSettings(max_new_tokens=20, temperature=1.0, stop=(stop, "zz")),
                   generator=torch.Generator().manual_seed(0), on_text=shown.append)
    assert cut[0].text == expected and cut[0].finish == "stop"
    assert "".join(shown) == expected  # streaming never showed (part of) the stop string


def test_stop_strings_end_beams(peaked):
    tok = WordTokenizer()
    prompt = [3, 1, 4]
    plain = complete(peaked, tok, prompt, DecodeSettings(max_new_tokens=8, beams=3))
    stop = tok.decode(plain[0].tokens[2:3])  # the best beam's third token
    cut = complete(peaked, tok, prompt, DecodeSettings(max_new_tokens=8, beams=3, stop=(stop,)))
    assert len(cut) == 3
    assert all(stop not in c.text for c in cut)
    stopped = [c for c in cut if c.finish == "stop"]
    # A stopped beam ends where the stop string first appears; its text is cut just before it.
    assert stopped and all(tok.decode(c.tokens) == c.text + stop for c in stopped)
    assert all(stop not in tok.decode(c.tokens) for c in cut if c.finish != "stop")


def test_task_prompt_keeps_room_and_trims_the_left(trained):
    _, tok = trained
    ids = list(range(10, 60))
    wrapped = task_prompt(tok, ids, 32, 10)
    assert wrapped[0] == tok.start_id and wrapped[-1] == tok.delim_id
    assert wrapped[1:-1] == ids[-20:]  # 32 - 2 - 10
    assert task_prompt(tok, ids, 32, 100)[1:-1] == ids[-14:]  # room capped at half the context
    assert task_prompt(tok, [7, 8], 32, 10) == [tok.start_id, 7, 8, tok.delim_id]


def test_decode_settings_are_checked():
    for settings, message in [
        (DecodeSettings(beams=0), "--beams must be at least 1"),
        (DecodeSettings(beams=2, top_k=5), "beam search"),
        (DecodeSettings(repetition_penalty=0), "--repetition-penalty must be greater than 0"),
        (DecodeSettings(temperature=float("nan")), "--temperature must be a finite number"),
        (DecodeSettings(top_p=1.5), "--top-p must be at most 1"),
        (DecodeSettings(top_k=-1), "--top-k must be at least 1"),
        (DecodeSettings(length_alpha=float("inf")), "--length-penalty must be a finite number"),
        (DecodeSettings(no_repeat_ngram_size=-1), "--no-repeat-ngram-size"),
        (DecodeSettings(length_norm="x"), "--length-norm"),
        (DecodeSettings(stop=("",)), "--stop needs a non-empty string"),
    ]:
        with pytest.raises(Gpt1Error, match=message):
            settings.check()


# ---------------------------------------------------------------------------------------------
# gpt1 generate


def test_cli_beams_print_the_n_best_with_scores(assets, trained, capsys):
    model, tok = trained
    result = support.run_main(["generate", "--ckpt", assets.run, "--prompt", PROMPT, "--beams", "3",
                               "--max-new-tokens", "6", "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    headers = [line for line in result.out.splitlines() if line.startswith("[beam ")]
    assert [h.split("]")[0] for h in headers] == ["[beam 1", "[beam 2", "[beam 3"]
    beams = beam_search(model, tok.encode(PROMPT), num_beams=3, max_new_tokens=6, stop_ids=(tok.eos_id,))
    assert f"score {beams[0].score:.4f}" in headers[0]
    lines = result.out.splitlines()
    assert lines[1].startswith(PROMPT)


def test_cli_stop_string_and_streaming(assets, capsys):
    base = ["generate", "--ckpt", assets.run, "--prompt", PROMPT, "--temperature", "1", "--seed", "3",
            "--max-new-tokens", "16", "--device", "cpu"]
    full = support.run_main(base, capsys)
    assert full.code == 0, full.err
    continuation = full.out[len(PROMPT):].rstrip("\n")
    stop = continuation.split()[2]
    cut = support.run_main(base + ["--stop", stop, "--stop", "zzz-never"], capsys)
    assert cut.code == 0, cut.err
    assert cut.out == PROMPT + continuation[: continuation.index(stop)] + "\n"


def test_cli_batch_generation_from_jsonl(assets, trained, tmp_path, capsys):
    model, tok = trained
    prompts = [PROMPT, "A small cat", "The river"]
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(prompts)))
    out = tmp_path / "out.jsonl"
    result = support.run_main(["generate", "--ckpt", assets.run, "--input", source, "--out", out, "--beams", "2",
                               "--max-new-tokens", "5", "--device", "cpu", "-q"], capsys)
    assert result.code == 0, result.err
    assert "3 completions written" in result.out
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [0, 1, 2]
    for prompt, record in zip(prompts, records):
        beams = beam_search(model, tok.encode(prompt), num_beams=2, max_new_tokens=5, stop_ids=(tok.eos_id,))
        assert len(record["beams"]) == 2
        assert [b["score"] for b in record["beams"]] == [round(b.score, 6) for b in beams]
        assert record["completion"] == record["beams"][0]["text"]
        expected = tok.decode(tok.encode(prompt) + beams[0].tokens[:-1 if beams[0].finish == "eos" else None])
        assert prompt + record["completion"] == expected
    # Sampling: line i uses seed + i, so line 0 equals a single --prompt run with the same seed.
    sampled = tmp_path / "sampled.jsonl"
    result = support.run_main(["generate", "--ckpt", assets.run, "--input", source, "--out", sampled,
                               "--max-new-tokens", "8", "--seed", "4", "--device", "cpu", "-q"], capsys)
    assert result.code == 0, result.err
    single = support.run_main(["generate", "--ckpt", assets.run, "--prompt", PROMPT, "--max-new-tokens", "8",
                               "--seed", "4", "--device", "cpu"], capsys)
    first = json.loads(sampled.read_text().splitlines()[0])
    assert single.out == PROMPT + first["completion"] + "\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give exactly one of --prompt TEXT or --input FILE"),
        (["--prompt", "a", "--input", "x.jsonl"], "give exactly one of --prompt TEXT or --input FILE"),
        (["--input", "x.jsonl"], "--input needs --out FILE"),
        (["--prompt", "a", "--out", "o.jsonl"], "--out goes with --input"),
        (["--prompt", "a", "--beams", "2", "--top-k", "3"], "beam search"),
        (["--prompt", "a", "--task-format", "--plain"], "contradict"),
        (["--prompt", "a", "--length-norm", "cube"], "--length-norm must be one of gnmt, power"),
        (["--prompt", "a", "--stop", ""], "--stop needs a non-empty string"),
    ],
)
def test_cli_rejects_bad_generation_requests(assets, capsys, extra, message):
    result = support.run_main(["generate", "--ckpt", assets.run, "--device", "cpu", *extra], capsys)
    support.assert_one_error_line(result, message)


def test_cli_bad_prompt_file_names_the_line(assets, tmp_path, capsys):
    source = tmp_path / "prompts.jsonl"
    source.write_text('{"prompt": "A cat"}\n{"text": "no prompt"}\n')
    result = support.run_main(["generate", "--ckpt", assets.run, "--input", source, "--out", tmp_path / "o.jsonl",
                               "--device", "cpu", "-q"], capsys)
    support.assert_one_error_line(result, f"{source}:2", "missing the 'prompt' field")
    assert not (tmp_path / "o.jsonl").exists()
    source.write_text('{"prompt": 3}\n')
    result = support.run_main(["generate", "--ckpt", assets.run, "--input", source, "--out", tmp_path / "o.jsonl",
                               "--device", "cpu", "-q"], capsys)
    support.assert_one_error_line(result, f"{source}:1", "'prompt' must be a string")
