"""Generation: greedy equals argmax decoding without a cache, top-k/top-p filters, seeds, `gpt1 generate`."""

from __future__ import annotations

import pytest
import torch

import support
from gpt1cli.config import preset
from gpt1cli.errors import Gpt1Error
from gpt1cli.model.generation.processors import filter_logits
from gpt1cli.model.generation.sampling import generate_tokens
from gpt1cli.model.gpt import GPT

PROMPT = "The old farmer walked"


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return GPT(preset("tiny", 120, n_ctx=24)).eval()


@torch.no_grad()
def argmax_without_cache(model: GPT, prompt: list[int], n: int, stop: int | None = None) -> list[int]:
    """Greedy decoding by full forwards over the visible context (re-windowed like the cache)."""
    n_ctx = model.config.n_ctx
    history, start, out = list(prompt), 0, []
    for _ in range(n):
        if len(history) - start > n_ctx:
            start = len(history) - n_ctx // 2
        hidden = model(torch.tensor([history[start:]]))
        token = int(model.logits(hidden[0, -1]).argmax())
        history.append(token)
        out.append(token)
        if token == stop:
            break
    return out


# ---------------------------------------------------------------------------------------------
# generate_tokens


def test_greedy_with_cache_equals_argmax_without_cache(trained):
    model, tok = trained
    prompt = tok.encode(PROMPT)
    n = model.config.n_ctx - len(prompt)  # fills the context exactly, no re-windowing
    greedy = list(generate_tokens(model, prompt, max_new_tokens=n, temperature=0))
    assert len(greedy) == n
    assert greedy == argmax_without_cache(model, prompt, n)
    assert greedy == list(generate_tokens(model, prompt, max_new_tokens=n, temperature=0))


def test_greedy_past_the_context_rebuilds_the_cache_from_the_recent_half(random_model):
    model = random_model
    prompt = [7, 8, 9, 10, 11]
    n = 3 * model.config.n_ctx  # re-windows several times
    greedy = list(generate_tokens(model, prompt, max_new_tokens=n, temperature=0))
    assert len(greedy) == n
    assert greedy == argmax_without_cache(model, prompt, n)


def test_top_k_one_equals_greedy(trained, random_model):
    for model, prompt in ((trained[0], trained[1].encode(PROMPT)), (random_model, [1, 2, 3])):
        greedy = list(generate_tokens(model, prompt, max_new_tokens=15, temperature=0))
        for seed in (0, 1):
            sampled = list(generate_tokens(model, prompt, max_new_tokens=15, temperature=1.5, top_k=1,
                                           generator=torch.Generator().manual_seed(seed)))
            assert sampled == greedy


def test_sampling_is_reproducible_per_seed(random_model):
    def sample(seed, **kw):
        return list(generate_tokens(random_model, [4, 5, 6], max_new_tokens=30, temperature=1.0,
                                    generator=torch.Generator().manual_seed(seed), **kw))

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    assert all(0 <= t < 120 for t in sample(5, top_p=0.9))


def test_stop_ids_end_generation_after_the_stop_token(random_model):
    greedy = list(generate_tokens(random_model, [1, 2, 3], max_new_tokens=20, temperature=0))
    stop = greedy[4]
    first = greedy.index(stop)
    stopped = list(generate_tokens(random_model, [1, 2, 3], max_new_tokens=20, temperature=0, stop_ids=(stop,)))
    assert stopped == greedy[: first + 1]


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    inf = float("-inf")
    k2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False, False]]
    torch.testing.assert_close(k2[0, :2], logits[0, :2])
    # top-p keeps the smallest prefix reaching p: 0.5 -> {0}; 0.6 -> {0, 1}; 0.85 -> {0, 1, 2}
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.6)).tolist() == [[True, True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.85)).tolist() == [[True, True, True, False, False]]
    # unsorted input: the mask follows the values, not the positions
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.6)).tolist() == [[False, True, False, False, True]]
    # top_p 1 and top_k >= vocab leave everything
    torch.testing.assert_close(filter_logits(logits, top_k=5, top_p=1.0), logits)
    assert filter_logits(logits, top_k=1)[0, 1] == inf


@pytest.mark.parametrize(
    "prompt, kwargs, message",
    [
        ([], {}, "the prompt is empty"),
        (list(range(24)), {}, "the prompt is 24 tokens, the model's context is 24"),
        ([1, 2], {"temperature": -0.5}, "--temperature must be at least 0"),
        ([1, 2], {"temperature": float("nan")}, "--temperature must be a finite number"),
    ],
)
def test_generate_tokens_rejects_bad_requests(random_model, prompt, kwargs, message):
    with pytest.raises(Gpt1Error, match=message):
        next(generate_tokens(random_model, prompt, max_new_tokens=3, **kwargs))


# ---------------------------------------------------------------------------------------------
# gpt1 generate


def test_cli_greedy_is_deterministic_and_equals_argmax(assets, trained, capsys):
    model, tok = trained
    argv = ["generate", "--ckpt", assets.run, "--prompt", PROMPT, "--max-new-tokens", "12", "--temperature", "0",
            "--device", "cpu"]
    first = support.run_main(argv, capsys)
    second = support.run_main(argv + ["--seed", "99"], capsys)
    assert first.code == 0, first.err
    assert first.out == second.out
    prompt_ids = tok.encode(PROMPT)
    expected_ids = argmax_without_cache(model, prompt_ids, 12, stop=tok.eos_id)
    if expected_ids and expected_ids[-1] == tok.eos_id:
        expected_ids = expected_ids[:-1]
    continuation = tok.decode(prompt_ids + expected_ids)[len(tok.decode(prompt_ids)):]
    assert first.out == PROMPT + continuation + "\n"
    assert len(first.out) > len(PROMPT) + 1


def test_cli_sampling_seed_and_checkpoint_folder(assets, capsys):
    folder = assets.run / "checkpoints" / (assets.run / "checkpoints" / "latest").read_text().strip()
    base = ["generate", "--prompt", PROMPT, "--max-new-tokens", "20", "--temperature", "1.2", "--device", "cpu"]
    a = support.run_main(base + ["--ckpt", assets.run, "--seed", "1"], capsys)
    b = support.run_main(base + ["--ckpt", folder, "--seed", "1"], capsys)  # the folder itself works too
    c = support.run_main(base + ["--ckpt", assets.run, "--seed", "2"], capsys)
    assert a.code == b.code == c.code == 0
    assert a.out == b.out
    assert a.out != c.out
    assert a.out.startswith(PROMPT) and c.out.startswith(PROMPT)


def test_cli_rejects_a_bad_device(assets, capsys):
    result = support.run_main(["generate", "--ckpt", assets.run, "--prompt", PROMPT, "--device", "tpu"], capsys)
    support.assert_one_error_line(result, "--device must be auto, cpu, cuda or cuda:N")


@pytest.mark.parametrize(
    "option, value, reason",
    [
        ("--max-new-tokens", "0", "at least 1"),
        ("--top-p", "0", "greater than 0"),
        ("--top-p", "1.5", "at most 1"),
        ("--top-p", "nan", "finite"),
        ("--top-k", "-1", "at least 1"),
        ("--temperature", "-1", "at least 0"),
        ("--temperature", "nan", "finite"),
        ("--temperature", "inf", "finite"),
        ("--repetition-penalty", "0", "greater than 0"),
        ("--length-penalty", "nan", "finite"),
        ("--seed", "-1", "at least 0"),
    ],
)
def test_cli_refuses_bad_numbers_at_parse_time(assets, capsys, option, value, reason):
    """Refused before the model loads: nan used to pass every `< 0` test and sample from NaN logits."""
    result = support.run_main(["generate", "--ckpt", assets.run, "--prompt", PROMPT, option, value], capsys)
    support.assert_refused_option(result, option, reason)
